// Worker Fabric console: draws queue-depth charts (uPlot) from the JSON the
// server renders in their data-series attribute, again whenever htmx swaps a fragment in.
// Everything else on the pages works without this file.
(function () {
  "use strict";

  var palette = ["#2f6fde", "#e0703d", "#2e9e6a", "#9b59b6", "#c0392b", "#16a085"];

  function draw(plot) {
    if (typeof uPlot === "undefined") return;
    var d;
    try { d = JSON.parse(plot.getAttribute("data-series")); } catch (e) { return; }
    plot.textContent = "";
    var series = [{}].concat(d.names.map(function (name, i) {
      var dead = / \(dead letters\)$/.test(name);
      return { label: name, stroke: palette[i % palette.length], width: 2, dash: dead ? [6, 4] : undefined, points: { show: false } };
    }));
    var width = Math.max(280, plot.clientWidth || plot.parentNode.clientWidth || 600);
    new uPlot({
      width: width,
      height: 180,
      series: series,
      axes: [{}, { label: "messages" }],
      scales: {
        // The last 15 minutes, whatever has been sampled of them yet.
        x: { time: true, range: function (u, min, max) { return [max - 900, max]; } },
        y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } }
      },
      legend: { live: false }
    }, [d.times].concat(d.series), plot);
  }

  function drawAll(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(draw);
  }

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (e) { drawAll(e.target); });
  document.addEventListener("htmx:sseMessage", function (e) { drawAll(e.target); });
})();

//! App properties on the command line: `k=v` arguments and properties
//! files (YAML maps or Java `.properties`), and the history of an app's
//! configurations as a table.

use std::path::Path;

use control_plane::model::{Configuration, Outcome, Properties};

/// `k=v` arguments as properties (the value may hold `=`).
pub fn parse_pairs(pairs: &[String]) -> Result<Properties, String> {
    let mut properties = Properties::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: a property is name=value"))?;
        properties.insert(k.trim().to_string(), v.to_string());
    }
    Ok(properties)
}

/// The properties in `file`: a YAML map of scalars, or (`.properties`)
/// `name=value` / `name: value` lines, `#` and `!` starting comments.
pub fn read_file(file: &Path) -> Result<Properties, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let is_java = file.extension().is_some_and(|e| e == "properties");
    if is_java {
        return java_properties(&text).map_err(|e| format!("{}: {e}", file.display()));
    }
    let map: std::collections::BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text)
        .map_err(|e| {
            format!(
                "{}: a YAML map of properties was expected: {e}",
                file.display()
            )
        })?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Ok((k, v.to_string())),
            _ => Err(format!(
                "{}: property {k:?} is not a single value",
                file.display()
            )),
        })
        .collect()
}

/// Java `.properties` lines (without escapes or continuations).
fn java_properties(text: &str) -> Result<Properties, String> {
    let mut properties = Properties::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let at = line
            .find(['=', ':'])
            .ok_or_else(|| format!("line {}: name=value expected", n + 1))?;
        properties.insert(
            line[..at].trim().to_string(),
            line[at + 1..].trim_start().to_string(),
        );
    }
    Ok(properties)
}

/// An app's configurations as table rows.
pub fn history_rows(kept: &Vec<Configuration>) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "#",
            "WHEN",
            "CHANGE",
            "BY",
            "VERSION",
            "WORKERS",
            "SIZE",
            "PROPERTIES",
            "OUTCOME",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in kept {
        let when = chrono::DateTime::from_timestamp_millis(c.at_ms as i64)
            .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let outcome = match &c.outcome {
            Outcome::Deployed => "deployed".to_string(),
            Outcome::Failed { reason } => {
                format!("failed: {}", reason.lines().next().unwrap_or_default())
            }
        };
        rows.push(vec![
            c.number.to_string(),
            when,
            c.change.clone(),
            c.by.clone(),
            c.version.map_or_else(|| "-".into(), |v| format!("v{v}")),
            c.workers.to_string(),
            c.size.to_string(),
            format!(
                "{} (+{} secure)",
                c.properties.len(),
                c.secure_properties.len()
            ),
            outcome,
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_files_read_as_properties() {
        let p = parse_pairs(&["a=1".into(), "url=http://h/?x=y".into()]).unwrap();
        assert_eq!(p["url"], "http://h/?x=y");
        assert!(parse_pairs(&["novalue".into()]).is_err());
        let j = java_properties("# c\n! c\nx = 1\ny: two words\nz=\n").unwrap();
        assert_eq!(
            (j["x"].as_str(), j["y"].as_str(), j["z"].as_str()),
            ("1", "two words", "")
        );
        assert!(java_properties("just text").is_err());
    }
}

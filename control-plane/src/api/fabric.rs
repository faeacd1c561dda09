//! The fabric as a whole: its events, its AZs, and the route table the
//! load balancers follow.

use super::*;

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    follow: bool,
}

pub(super) async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let tenant = api.tenant(&headers)?;
    // An app's events are its instance's: those of an earlier app of the
    // same name (another tenant's, perhaps) are not shown.
    let visible = {
        let api = api.clone();
        move |e: &crate::model::Event| -> bool {
            tenant == ADMIN
                || match &e.app {
                    None => true,
                    Some(name) => api.registry.app(name).is_some_and(|a| {
                        a.tenant == tenant && e.app_id.as_deref() == Some(a.app_id().as_str())
                    }),
                }
        }
    };
    if !q.follow {
        let events: Vec<_> = api
            .supervisor
            .events()
            .recent()
            .into_iter()
            .filter(|e| visible(e))
            .collect();
        return Ok(Json(events).into_response());
    }
    let backlog: Vec<_> = api.supervisor.events().recent();
    let live = BroadcastStream::new(api.supervisor.events().subscribe()).filter_map(Result::ok);
    let stream = tokio_stream::iter(backlog)
        .chain(live)
        .filter(move |e| visible(e))
        .map(|e| Ok::<_, Infallible>(SseEvent::default().json_data(&e).unwrap_or_default()));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub(super) async fn azs(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Response> {
    api.tenant(&headers)?;
    Ok(Json(api.supervisor.azs()).into_response())
}

pub(super) async fn az_action(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((az, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    let known = match action.as_str() {
        "fail" => api.supervisor.fail_az(&az).await,
        "restore" => api.supervisor.restore_az(&az).await,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no AZ action {other}"),
            ));
        }
    };
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no AZ named {az}"),
        ));
    }
    Ok(Json(api.supervisor.azs()).into_response())
}

#[derive(Deserialize)]
pub(super) struct RoutesQuery {
    /// Answer once the table's version is above this (long poll, up to 30 s).
    after: Option<u64>,
}

pub(super) async fn routes(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<RoutesQuery>,
) -> ApiResult<Response> {
    api.admin(&headers)?;
    let mut rx = api.supervisor.routes();
    if let Some(after) = q.after {
        let _ =
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|t| t.version > after)).await;
    }
    let table = rx.borrow().clone();
    Ok(Json(table).into_response())
}

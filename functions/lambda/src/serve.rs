//! Cold start and the invocation loop.

use std::future::Future;
use std::sync::Arc;

use dms2delta::config::Validated;
use dms2delta::deadline::Deadline;
use lambda_runtime::{service_fn, Context, Error, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What every function does once per execution environment before its own state: JSON logs,
/// and the configuration named by `DMS2DELTA_CONFIG`, read and validated.
pub async fn cold_start() -> Result<Arc<Validated>, Error> {
    dms2delta::bootstrap::init_tracing();
    Ok(Arc::new(dms2delta::bootstrap::load_config_from_env().await?))
}

/// The invocation's deadline, from its context.
pub fn deadline_of(context: &Context) -> Deadline {
    Deadline::from_epoch_millis(context.deadline)
}

/// One invocation: the handler gets the state built at cold start, the payload and the deadline.
pub fn invoke<'a, S, E, R, F, Fut>(state: &'a S, handler: &F, event: LambdaEvent<E>) -> Fut
where
    F: Fn(&'a S, E, Deadline) -> Fut,
    Fut: Future<Output = Result<R, Error>>,
{
    let deadline = deadline_of(&event.context);
    handler(state, event.payload, deadline)
}

/// Serves invocations until the runtime stops. `state` lives for the whole execution
/// environment and is lent to every invocation.
pub async fn serve<'a, S, E, R, F, Fut>(state: &'a S, handler: F) -> Result<(), Error>
where
    F: Fn(&'a S, E, Deadline) -> Fut,
    Fut: Future<Output = Result<R, Error>>,
    E: DeserializeOwned,
    R: Serialize,
{
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<E>| invoke(state, handler, event))).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Invocation;
    use serde_json::{json, Value};
    use std::sync::Mutex;

    struct State {
        seen: Mutex<Vec<(Deadline, bool)>>,
    }

    async fn handler(state: &State, input: Invocation, deadline: Deadline) -> Result<Value, Error> {
        state.seen.lock().unwrap().push((deadline, input.is_sqs()));
        Ok(json!({"ok": true}))
    }

    #[tokio::test]
    async fn the_context_deadline_reaches_the_handler() {
        let state = State {
            seen: Mutex::new(Vec::new()),
        };
        let mut context = Context::default();
        context.deadline = 1_700_000_123_456;
        let payload: Invocation =
            serde_json::from_value(json!({"Records": [{"messageId": "m", "eventSource": "aws:sqs", "body": "{}"}]}))
                .unwrap();
        let r = invoke(&state, &handler, LambdaEvent::new(payload, context.clone()))
            .await
            .unwrap();
        assert_eq!(r, json!({"ok": true}));
        context.deadline += 5;
        invoke(
            &state,
            &handler,
            LambdaEvent::new(Invocation::Direct(json!({})), context),
        )
        .await
        .unwrap();
        assert_eq!(
            state.seen.into_inner().unwrap(),
            vec![
                (Deadline::from_epoch_millis(1_700_000_123_456), true),
                (Deadline::from_epoch_millis(1_700_000_123_461), false)
            ]
        );
    }
}

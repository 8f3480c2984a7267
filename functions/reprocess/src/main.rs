//! The reprocess Lambda: wiring only. Configuration, the SQS client and the settings are built
//! once per cold start and lent to every invocation.

use std::sync::Arc;

use dms2delta::dms::{Remembered, REMEMBER_ANSWERS_FOR};
use dms2delta_lambda::dms::{self, DmsApi};
use reprocess::handler::{self, Settings};
use reprocess::queues::Sqs;

#[tokio::main]
async fn main() -> Result<(), dms2delta_lambda::Error> {
    let config = dms2delta_lambda::cold_start().await?;
    let settings = Settings::from_env(|k| std::env::var(k).ok())?;
    let aws = aws_config::load_from_env().await;
    let queues = Arc::new(Sqs::new(aws_sdk_sqs::Client::new(&aws)));
    let asks_dms = config.sources().iter().any(|s| s.dms_task_arn.is_some());
    let mut state = handler::State::new(config, queues, settings);
    // Reloads settle as soon as DMS reports their table loaded, for sources naming their task.
    if asks_dms {
        state = state.with_load_progress(Arc::new(Remembered::new(
            DmsApi::new(dms::sdk::Client::new(&aws)),
            REMEMBER_ANSWERS_FOR,
        )));
    }
    // A run is bounded by MAX_FILES and MAX_REDRIVE rather than by the deadline: what it
    // leaves, the next run (alarm or schedule) takes. Its triggers (SNS alarms, schedules,
    // requests by hand) stay JSON: no one typed event covers them.
    dms2delta_lambda::serve(&state, |state, payload, _deadline| handler::handle(state, payload)).await
}

//! The commit Lambda: wiring only. The state (configuration, storage clients, the optional Glue
//! client) is built once per cold start and lent to every invocation with its deadline.

use std::sync::Arc;

use commit::glue::Glue;
use commit::handler;
use dms2delta::catalog::CatalogSync;
use dms2delta::dms::{Remembered, REMEMBER_ANSWERS_FOR};
use dms2delta_lambda::dms::{self, DmsApi};

#[tokio::main]
async fn main() -> Result<(), dms2delta_lambda::Error> {
    let mut state = handler::State::new(dms2delta_lambda::cold_start().await?);
    let glue_database = std::env::var("GLUE_DATABASE").ok().filter(|d| !d.trim().is_empty());
    let asks_dms = state.config.sources().iter().any(|s| s.dms_task_arn.is_some());
    if glue_database.is_some() || asks_dms {
        let aws = aws_config::load_from_env().await;
        // Registration in the Glue Data Catalog is on when the stack names a database.
        if let Some(database) = glue_database {
            let glue = Arc::new(Glue::new(aws_sdk_glue::Client::new(&aws)));
            state = state.with_catalog(CatalogSync::new(glue, database.trim()));
        }
        // A reload settles as soon as DMS reports its table loaded, for sources naming their task.
        if asks_dms {
            state = state.with_load_progress(Arc::new(Remembered::new(
                DmsApi::new(dms::sdk::Client::new(&aws)),
                REMEMBER_ANSWERS_FOR,
            )));
        }
    }
    dms2delta_lambda::serve(&state, handler::handle_until).await
}

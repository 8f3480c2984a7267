//! The compact Lambda: wiring only. The state is built once per cold start and lent to every
//! invocation with its deadline.

use compact::handler;

#[tokio::main]
async fn main() -> Result<(), dms2delta_lambda::Error> {
    let state = handler::State::new(dms2delta_lambda::cold_start().await?);
    dms2delta_lambda::serve(&state, handler::handle_until).await
}

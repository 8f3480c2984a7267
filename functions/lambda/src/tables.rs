//! Group by table -> run each table once -> answer per message.
//!
//! An invocation may name one table many times (an SQS batch of change-set or log events); each
//! table is worked on once, and a message is failed, for the queue to deliver again, exactly when
//! a table it named failed or was not started.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use dms2delta::deadline::Deadline;
use dms2delta::events::{ObjectEvent, Payload};
use serde::Serialize;
use serde_json::{json, Value};

use crate::invocation::batch_response;

/// A table, as the functions name it in logs, metrics and answers (`namespace.schema.table`).
pub use dms2delta::model::TableId as Table;

/// One message (or the whole direct invocation) and the tables it needs.
#[derive(Debug)]
struct Need<K> {
    message_id: Option<String>,
    /// `Err` when the message could not be read: it fails whatever the tables do.
    tables: Result<Vec<K>, dms2delta::Error>,
}

/// One invocation's work, grouped by table: for each table, the values its objects gave.
#[derive(Debug)]
pub struct ByTable<K, V> {
    needs: Vec<Need<K>>,
    work: BTreeMap<K, Vec<V>>,
    sqs: bool,
}

/// What became of one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    Done(T),
    Failed(String),
    /// Not started: too close to the invocation's deadline.
    Deferred,
}

/// Why a deferred table has no result, in direct answers.
const DEFERRED: &str = "not started: too close to the invocation's deadline";

impl<K: Ord + Clone + fmt::Display, V> ByTable<K, V> {
    /// Groups the objects of every delivery by the table `pick` assigns them to; objects it
    /// returns `None` for (another bucket, not a creation, not a table's object) are ignored.
    /// `stage` names the function in the log line of an unreadable message.
    pub fn group(stage: &str, payload: Payload, mut pick: impl FnMut(&ObjectEvent) -> Option<(K, V)>) -> ByTable<K, V> {
        let (sqs, deliveries) = match payload {
            Payload::Sqs(d) => (true, d),
            Payload::Direct(d) => (false, vec![d]),
        };
        let mut work: BTreeMap<K, Vec<V>> = BTreeMap::new();
        let needs = deliveries
            .into_iter()
            .map(|d| {
                let tables = match d.objects {
                    Ok(objects) => Ok(objects
                        .iter()
                        .filter_map(&mut pick)
                        .map(|(k, v)| {
                            work.entry(k.clone()).or_default().push(v);
                            k
                        })
                        .collect()),
                    Err(e) => {
                        tracing::error!(stage, message_id = d.message_id.as_deref().unwrap_or(""), error = %e, "unreadable event");
                        Err(e)
                    }
                };
                Need {
                    message_id: d.message_id,
                    tables,
                }
            })
            .collect();
        ByTable { needs, work, sqs }
    }

    /// The tables, in order, each once.
    pub fn tables(&self) -> impl Iterator<Item = &K> {
        self.work.keys()
    }

    /// Runs every table once, in order. With a `reserve`, a table is started only while the
    /// deadline leaves that much time, except the first, so that every invocation makes
    /// progress whatever the function's timeout; the others are [`Outcome::Deferred`].
    pub async fn run<T, E, F, Fut>(self, deadline: Deadline, reserve: Option<Duration>, mut run: F) -> Ran<K, T>
    where
        F: FnMut(K, Vec<V>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let mut results = BTreeMap::new();
        let mut started = false;
        for (k, values) in self.work {
            if let Some(reserve) = reserve {
                if started && !deadline.allows(reserve) {
                    results.insert(k, Outcome::Deferred);
                    continue;
                }
            }
            started = true;
            let outcome = match run(k.clone(), values).await {
                Ok(t) => Outcome::Done(t),
                Err(e) => Outcome::Failed(e.to_string()),
            };
            results.insert(k, outcome);
        }
        Ran {
            needs: self.needs,
            results,
            sqs: self.sqs,
        }
    }
}

/// Every table's outcome, and the messages that asked for them.
#[derive(Debug)]
pub struct Ran<K, T> {
    needs: Vec<Need<K>>,
    results: BTreeMap<K, Outcome<T>>,
    sqs: bool,
}

impl<K: Ord + fmt::Display, T> Ran<K, T> {
    pub fn results(&self) -> &BTreeMap<K, Outcome<T>> {
        &self.results
    }

    /// The tables not started for lack of time.
    pub fn deferred(&self) -> impl Iterator<Item = &K> {
        self.results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Deferred))
            .map(|(k, _)| k)
    }

    fn need_failed(&self, need: &Need<K>) -> bool {
        match &need.tables {
            Err(_) => true,
            Ok(tables) => tables
                .iter()
                .any(|k| !matches!(self.results.get(k), Some(Outcome::Done(_)))),
        }
    }

    /// The ids of the messages to deliver again (messages without an id are reported with an
    /// empty one, which Lambda takes as a failure of the whole batch, the safe side).
    pub fn failed_messages(&self) -> Vec<String> {
        self.needs
            .iter()
            .filter(|n| self.need_failed(n))
            .map(|n| n.message_id.clone().unwrap_or_default())
            .collect()
    }

    /// The invocation's answer. An SQS batch answers with its partial batch failures; a direct
    /// invocation answers `{"tables": [...]}`, one entry per table (a table done is its result
    /// serialized), and fails as a whole, naming `what` failed, if any of its tables did not
    /// succeed, so that Lambda's retry and on-failure destination take over.
    pub fn respond(self, what: &str) -> Result<Value, lambda_runtime::Error>
    where
        T: Serialize,
    {
        if self.sqs {
            return Ok(serde_json::to_value(batch_response(self.failed_messages()))?);
        }
        let failed = self.needs.iter().any(|n| self.need_failed(n));
        let tables = self
            .results
            .iter()
            .map(|(k, o)| match o {
                Outcome::Done(t) => serde_json::to_value(t),
                Outcome::Failed(e) => Ok(json!({"table": k.to_string(), "error": e})),
                Outcome::Deferred => Ok(json!({"table": k.to_string(), "error": DEFERRED})),
            })
            .collect::<Result<Vec<Value>, _>>()?;
        if failed {
            Err(format!("{what} failed: {}", Value::Array(tables)).into())
        } else {
            Ok(json!({ "tables": tables }))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use dms2delta::events::{ObjectEventKind, Payload};
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn object(key: &str) -> ObjectEvent {
        ObjectEvent {
            bucket: "b".into(),
            key: key.into(),
            size: None,
            etag: None,
            sequencer: None,
            kind: ObjectEventKind::Created,
            time: None,
        }
    }

    fn delivery(id: &str, keys: &[&str]) -> dms2delta::events::Delivery {
        dms2delta::events::Delivery {
            message_id: Some(id.into()),
            objects: Ok(keys.iter().map(|k| object(k)).collect()),
        }
    }

    /// `t/<table>/<n>` belongs to `<table>` with value n; anything else to no table.
    fn pick(o: &ObjectEvent) -> Option<(String, u32)> {
        let mut parts = o.key.split('/');
        (parts.next() == Some("t")).then_some(())?;
        let table = parts.next()?.to_string();
        Some((table, parts.next()?.parse().ok()?))
    }

    fn batch() -> Payload {
        let unreadable = dms2delta::events::sqs_delivery(Some("m4".into()), Some("not json"));
        Payload::Sqs(vec![
            delivery("m1", &["t/a/1", "t/b/2"]),
            delivery("m2", &["t/a/3"]),
            delivery("m3", &["t/c/4", "elsewhere"]),
            unreadable,
            delivery("m5", &[]),
        ])
    }

    #[tokio::test]
    async fn each_table_runs_once_with_all_its_work_and_fails_only_its_messages() {
        let calls = RefCell::new(Vec::new());
        let ran = ByTable::group("test", batch(), pick)
            .run(Deadline::NONE, None, |table, values| {
                calls.borrow_mut().push((table.clone(), values.clone()));
                async move {
                    if table == "a" {
                        Err("a is broken".to_string())
                    } else {
                        Ok(values.len())
                    }
                }
            })
            .await;
        assert_eq!(
            calls.into_inner(),
            vec![
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2]),
                ("c".to_string(), vec![4])
            ]
        );
        assert_eq!(ran.results()["b"], Outcome::Done(1));
        // m1 and m2 named the failed table; m4 could not be read; m3 and m5 succeed.
        assert_eq!(ran.failed_messages(), vec!["m1", "m2", "m4"]);
        let answer = ran.respond("test").unwrap();
        assert_eq!(
            answer,
            json!({"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}, {"itemIdentifier": "m4"}]})
        );
    }

    #[tokio::test]
    async fn past_the_deadline_only_the_first_table_starts_and_the_rest_go_back_to_the_queue() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let short = Deadline::from_epoch_millis(now + 1_000);
        let started = RefCell::new(Vec::new());
        let ran = ByTable::group("test", batch(), pick)
            .run(short, Some(Duration::from_secs(30)), |table, _| {
                started.borrow_mut().push(table);
                async { Ok::<_, String>(()) }
            })
            .await;
        assert_eq!(started.into_inner(), vec!["a"]);
        assert_eq!(ran.deferred().collect::<Vec<_>>(), vec!["b", "c"]);
        assert_eq!(ran.failed_messages(), vec!["m1", "m3", "m4"]);
        // Without a reserve the deadline does not gate.
        let ran = ByTable::group("test", batch(), pick)
            .run(short, None, |_, _| async { Ok::<_, String>(()) })
            .await;
        assert_eq!(ran.failed_messages(), vec!["m4"]);
    }

    #[tokio::test]
    async fn a_direct_invocation_answers_a_summary_or_fails_as_a_whole() {
        let direct = || Payload::Direct(delivery("ignored", &["t/a/1", "t/b/2"]));
        let ok = ByTable::group("test", direct(), pick)
            .run(Deadline::NONE, None, |t, v| async move {
                Ok::<_, String>(json!({"table": t, "values": v}))
            })
            .await
            .respond("test")
            .unwrap();
        assert_eq!(
            ok,
            json!({"tables": [{"table": "a", "values": [1]}, {"table": "b", "values": [2]}]})
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let err = ByTable::group("test", direct(), pick)
            .run(
                Deadline::from_epoch_millis(now),
                Some(Duration::from_secs(1)),
                |_, _| async { Err::<(), _>("boom".to_string()) },
            )
            .await
            .respond("compaction")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "compaction failed: {}",
                json!([{"table": "a", "error": "boom"}, {"table": "b", "error": DEFERRED}])
            )
        );
        // A table type renders as namespace.schema.table.
        assert_eq!(
            Table::new("mysql", "shop", "order items").to_string(),
            "mysql.shop.order items"
        );
    }
}

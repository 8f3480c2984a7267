//! Column references for the MERGE's two sides.

use deltalake::datafusion::common::Column;
use deltalake::datafusion::functions::core::expr_fn::coalesce;
use deltalake::datafusion::functions::string::expr_fn::contains;
use deltalake::datafusion::prelude::{lit, Expr};

use crate::model::columns::NOSUP;

pub(super) fn s(name: &str) -> Expr {
    Expr::Column(Column::new(Some("source"), name))
}

pub(super) fn t(name: &str) -> Expr {
    Expr::Column(Column::new(Some("target"), name))
}

pub(super) fn target_col(name: &str) -> Column {
    Column::new_unqualified(name)
}

/// Whether the change did not log `c` (never NULL, unlike `contains` on a NULL list).
pub(super) fn unlogged(c: &str) -> Expr {
    contains(coalesce(vec![s(NOSUP), lit("")]), lit(format!("|{c}|")))
}

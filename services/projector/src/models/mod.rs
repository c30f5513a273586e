//! The read models, one module per table: its rows, what each event does to them (folded over
//! a batch without I/O), and the SQL that writes a batch's changes with one set-based
//! statement per kind of change. The tables themselves are defined in `migrations/` only.
//!
//! Every value comes from the events (never the clock), so replaying the log gives the same
//! rows however it is cut into batches. Writes run inside the store's transaction, together
//! with the event ids they apply and the checkpoint.

pub(crate) mod agents;
pub(crate) mod alerts;
pub(crate) mod escalations;
pub(crate) mod executions;
pub(crate) mod handoffs;
pub(crate) mod history;
pub(crate) mod interactions;
pub(crate) mod knowledge;
pub(crate) mod rejections;
pub(crate) mod status;
pub(crate) mod tasks;
pub(crate) mod templates;
pub(crate) mod usage;
pub(crate) mod workflows;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgConnection;

use crate::projection::Projection;

/// Splits `rows` into one `Vec` per column, moving the values, ready to bind as the Postgres
/// arrays of an `UNNEST` statement: `columns!(for r in rows => id, name, kind = r.kind.to_owned())`
/// binds `id` and `name` (the fields of those names) and `kind` (the expression).
///
/// The query macros check each array's element type, but know no `Vec<Option<T>>`: an array
/// whose elements may be NULL is bound as `column as _`, and the statement's `$n::type[]` cast
/// still fixes what Postgres reads (the Postgres-backed tests write every such column).
macro_rules! columns {
    (for $row:ident in $rows:ident => $($column:ident $(= $value:expr)?),+ $(,)?) => {
        $(let mut $column = Vec::with_capacity($rows.len());)+
        for $row in $rows {
            $($column.push(columns!(@value $row, $column $(, $value)?));)+
        }
    };
    (@value $row:ident, $column:ident) => {
        $row.$column
    };
    (@value $row:ident, $column:ident, $value:expr) => {
        $value
    };
}
pub(crate) use columns;

/// Empties `projection`'s read models (`cadre-projector rebuild`).
pub(crate) async fn reset(
    tx: &mut PgConnection,
    projection: Projection,
) -> Result<(), sqlx::Error> {
    match projection {
        Projection::Runs => {
            executions::reset(tx).await?;
            escalations::reset(tx).await?;
            tasks::reset(tx).await?;
            history::reset(tx).await
        }
        Projection::Interactions => {
            interactions::reset(tx).await?;
            handoffs::reset(tx).await
        }
        Projection::Knowledge => knowledge::reset(tx).await,
        Projection::Catalog => {
            agents::reset(tx).await?;
            workflows::reset(tx).await?;
            templates::reset(tx).await?;
            status::reset(tx).await?;
            usage::reset(tx).await?;
            alerts::reset(tx).await?;
            rejections::reset(tx).await
        }
    }
}

/// The serde name of a unit enum variant (`"pipeline"`, `"manual"`).
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

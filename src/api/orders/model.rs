//! The rows `/orders` answers with: [`Order`] (one row of `public.orders`,
//! timestamps in the change events' form), [`OrderList`] (a keyset page and
//! its snapshot hand-off) and [`OrderStatus`].
//!
//! It does not run SQL (the handlers in `orders` do) and does not check
//! request bodies (that is `body`).

use deadpool_postgres::tokio_postgres::Row;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::ApiError;

/// An order's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Processing,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Processing => "processing",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub(super) fn expected() -> String {
        OrderStatus::ALL.map(OrderStatus::as_str).join(", ")
    }
}

/// One row of `public.orders`, with the table's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    #[schema(example = 42)]
    pub id: i64,
    #[schema(example = "Harry")]
    pub customer_name: String,
    #[schema(example = "iPhone 17")]
    pub product_name: String,
    /// One of the five statuses the table's CHECK constraint allows.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    /// `timestamp` (UTC, no offset) in the change events' form.
    #[schema(example = "2026-11-22T05:04:10.580065")]
    pub created_at: String,
    /// Set by a trigger on every UPDATE, from the API or not.
    #[schema(example = "2026-11-22T05:04:10.580065")]
    pub updated_at: String,
}

impl Order {
    pub(super) fn from_row(row: &Row) -> Result<Order, ApiError> {
        let read = || -> Result<Order, tokio_postgres::Error> {
            Ok(Order {
                id: row.try_get("id")?,
                customer_name: row.try_get("customer_name")?,
                product_name: row.try_get("product_name")?,
                status: row.try_get("status")?,
                created_at: event_timestamp(row.try_get("created_at")?),
                updated_at: event_timestamp(row.try_get("updated_at")?),
            })
        };
        read().map_err(|e| ApiError::internal(format!("unexpected orders row: {e}")))
    }
}

/// Postgres's ISO text of a `timestamp` (`2026-11-22 05:04:10.58`) in the
/// change events' form (`2026-11-22T05:04:10.580000`: six fraction digits,
/// which Postgres does not always write). Other forms (`infinity`, BC
/// dates) stay as Postgres wrote them, as in events.
fn event_timestamp(text: String) -> String {
    let bytes = text.as_bytes();
    let plain = bytes.len() >= 19
        && bytes[10] == b' '
        && bytes[..10].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
        && bytes[11..]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b':' || *b == b'.');
    if plain {
        let mut text = text;
        text.replace_range(10..11, "T");
        // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; `.ffffff` makes 26.
        match text.len() {
            19 => text.push_str(".000000"),
            21..=25 if text.as_bytes()[19] == b'.' => {
                let pad = 26 - text.len();
                text.extend(std::iter::repeat_n('0', pad));
            }
            _ => {}
        }
        text
    } else {
        text
    }
}

/// A page of `GET /orders`, with what a client needs to join the change
/// stream exactly where the page was read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    /// Orders in ascending `id` order.
    pub orders: Vec<Order>,
    /// The `after` value for the next page; `null` on the last page.
    #[schema(required = true, example = 50)]
    pub next_after: Option<i64>,
    /// `pg_current_snapshot()` of the transaction the page was read in,
    /// `xmin:xmax:xip,…`. Pass it as the Socket.IO handshake's
    /// `auth.snapshot` to receive exactly the changes this page does not
    /// show.
    #[schema(example = "745:749:745,747")]
    pub snapshot: String,
    /// The WAL position (`X/X`) read just before that transaction began.
    #[schema(example = "0/16B3748")]
    pub snapshot_lsn: String,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn timestamps_take_the_event_form() {
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10.580065".into()),
            "2026-11-22T05:04:10.580065"
        );
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10".into()),
            "2026-11-22T05:04:10.000000"
        );
        assert_eq!(
            event_timestamp("2026-11-22 05:04:10.58".into()),
            "2026-11-22T05:04:10.580000"
        );
        assert_eq!(event_timestamp("infinity".into()), "infinity");
        assert_eq!(
            event_timestamp("0044-03-15 12:00:00 BC".into()),
            "0044-03-15 12:00:00 BC"
        );
    }

    #[test]
    fn statuses_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().into())
            );
        }
    }
}

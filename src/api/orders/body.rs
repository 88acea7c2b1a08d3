//! The request bodies of `/orders`: [`OrderInput`] (`POST`) and
//! [`OrderPatch`] (`PUT`, `PATCH`). Each type is both what the handlers get
//! after checking and what `/openapi.json` describes (`ToSchema`), so the
//! document and the checks cannot drift apart.
//!
//! Bodies are checked by hand rather than by a serde derive, because every
//! problem must be a 422 naming its field, and in a fixed order: the keys
//! first (so that a typo such as `staus` is named as such rather than as a
//! missing field), then `customer_name`, `product_name`, `status`.
//!
//! It does not read the request (the `JsonBody` extractor has already
//! checked the content type, the size and the JSON syntax) and does not
//! touch the database.

use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{OrderStatus, MAX_NAME_CHARS};
use crate::api::ApiError;

/// The fields a client may write; everything else in a body is refused.
/// (A unit test checks that both body schemas have exactly these.)
const WRITABLE_FIELDS: [&str; 3] = ["customer_name", "product_name", "status"];
/// Fields of an order that the server sets; named in the error when a
/// client sends an order it read back.
const READ_ONLY_FIELDS: [&str; 3] = ["id", "created_at", "updated_at"];

/// Body of `POST /orders`.
#[derive(Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    /// Required; 1 to 200 characters after trimming; stored trimmed.
    #[schema(value_type = String, min_length = 1, max_length = 200, example = "Harry")]
    pub customer_name: Name,
    /// Required; 1 to 200 characters after trimming; stored trimmed.
    #[schema(value_type = String, min_length = 1, max_length = 200, example = "iPhone 17")]
    pub product_name: Name,
    /// Defaults to `pending`.
    #[schema(nullable = false)]
    pub status: Option<OrderStatus>,
}

/// Body of `PUT /orders/{id}` and `PATCH /orders/{id}`: any subset of the
/// writable fields; an omitted field is left unchanged, `{}` changes nothing.
#[derive(Debug, Default, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPatch {
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 200)]
    pub customer_name: Option<Name>,
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 200)]
    pub product_name: Option<Name>,
    #[schema(nullable = false)]
    pub status: Option<OrderStatus>,
}

impl OrderInput {
    /// Checks a `POST` body: both names are required. The first problem
    /// found is the error.
    pub fn from_json(body: &Value) -> Result<OrderInput, ApiError> {
        let object = writable_object(body)?;
        // Fields are checked in the order written here.
        Ok(OrderInput {
            customer_name: required(object, "customer_name")?,
            product_name: required(object, "product_name")?,
            status: optional(object, "status")?,
        })
    }
}

impl OrderPatch {
    /// Checks a `PUT`/`PATCH` body: every field is optional. The first
    /// problem found is the error.
    pub fn from_json(body: &Value) -> Result<OrderPatch, ApiError> {
        let object = writable_object(body)?;
        Ok(OrderPatch {
            customer_name: optional(object, "customer_name")?,
            product_name: optional(object, "product_name")?,
            status: optional(object, "status")?,
        })
    }

    /// Whether the body names no new value (`{}`).
    pub fn is_empty(&self) -> bool {
        *self == OrderPatch::default()
    }
}

/// A customer or product name as stored: trimmed, 1 to
/// [`MAX_NAME_CHARS`] characters, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A value of one body field, checked; `field` names it in the error.
trait BodyField: Sized {
    fn check(value: &Value, field: &str) -> Result<Self, ApiError>;
}

impl BodyField for Name {
    fn check(value: &Value, field: &str) -> Result<Name, ApiError> {
        let trimmed = string_field(value, field)?.trim();
        if trimmed.is_empty() {
            return Err(ApiError::invalid(
                "invalid_field",
                field,
                format!("{field} must not be empty"),
            ));
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid(
                "invalid_field",
                field,
                format!("{field} must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        // Postgres text cannot hold NUL; refusing it here keeps the database
        // error (and its text) out of the picture.
        if trimmed.contains('\0') {
            return Err(ApiError::invalid(
                "invalid_field",
                field,
                format!("{field} must not contain NUL characters"),
            ));
        }
        Ok(Name(trimmed.to_owned()))
    }
}

impl BodyField for OrderStatus {
    fn check(value: &Value, field: &str) -> Result<OrderStatus, ApiError> {
        let text = string_field(value, field)?;
        OrderStatus::parse(text).ok_or_else(|| {
            ApiError::invalid(
                "invalid_field",
                field,
                format!("{field} must be one of {}", OrderStatus::expected()),
            )
        })
    }
}

/// The body as an object whose keys are all writable fields.
fn writable_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    let Value::Object(object) = body else {
        return Err(ApiError::Validation {
            code: "invalid_body",
            message: format!(
                "the body must be a JSON object with the fields {}",
                WRITABLE_FIELDS.join(", ")
            ),
            field: None,
        });
    };
    for key in object.keys() {
        if READ_ONLY_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                "read_only_field",
                key,
                format!("{key} is set by the server and cannot be written"),
            ));
        }
        if !WRITABLE_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                "unknown_field",
                key,
                format!(
                    "unknown field; the writable fields are {}",
                    WRITABLE_FIELDS.join(", ")
                ),
            ));
        }
    }
    Ok(object)
}

fn required<T: BodyField>(object: &Map<String, Value>, field: &str) -> Result<T, ApiError> {
    optional(object, field)?
        .ok_or_else(|| ApiError::invalid("missing_field", field, format!("{field} is required")))
}

fn optional<T: BodyField>(object: &Map<String, Value>, field: &str) -> Result<Option<T>, ApiError> {
    object
        .get(field)
        .map(|value| T::check(value, field))
        .transpose()
}

fn string_field<'a>(value: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    value.as_str().ok_or_else(|| {
        ApiError::invalid(
            "invalid_type",
            field,
            format!("{field} must be a string, not {}", json_type(value)),
        )
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use utoipa::openapi::{RefOr, Schema};
    use utoipa::PartialSchema;

    use super::*;

    fn rejected(body: Value, names_required: bool) -> (&'static str, Option<String>) {
        let error = if names_required {
            OrderInput::from_json(&body).unwrap_err()
        } else {
            OrderPatch::from_json(&body).unwrap_err()
        };
        match error {
            ApiError::Validation { code, field, .. } => (code, field),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn name(text: &str) -> Name {
        Name(text.to_owned())
    }

    #[test]
    fn accepts_the_common_shape_and_trims() {
        let input = OrderInput::from_json(
            &json!({"customer_name": "  Harry ", "product_name": "iPhone 17", "status": "shipped"}),
        )
        .unwrap();
        assert_eq!(
            input,
            OrderInput {
                customer_name: name("Harry"),
                product_name: name("iPhone 17"),
                status: Some(OrderStatus::Shipped),
            }
        );
        let patch = OrderPatch::from_json(&json!({"product_name": " p "})).unwrap();
        assert_eq!(
            patch,
            OrderPatch {
                product_name: Some(name("p")),
                ..OrderPatch::default()
            }
        );
        assert!(!patch.is_empty());
        assert!(OrderPatch::from_json(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn every_rule_names_its_field() {
        let name = |n: &str| json!({"customer_name": n, "product_name": "p"});
        assert_eq!(
            rejected(json!({"product_name": "p"}), true),
            ("missing_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(name("   "), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(name(&"é".repeat(201)), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert!(OrderInput::from_json(&name(&"é".repeat(200))).is_ok());
        assert_eq!(
            rejected(name("a\0b"), true),
            ("invalid_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(json!({"customer_name": 7, "product_name": "p"}), true),
            ("invalid_type", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(json!({"status": "lost"}), false),
            ("invalid_field", Some("status".into()))
        );
        assert_eq!(
            rejected(json!({"status": null}), false),
            ("invalid_type", Some("status".into()))
        );
        assert_eq!(
            rejected(json!({"staus": "shipped"}), false),
            ("unknown_field", Some("staus".into()))
        );
        assert_eq!(
            rejected(json!({"id": 3, "customer_name": "c"}), false),
            ("read_only_field", Some("id".into()))
        );
        assert_eq!(rejected(json!([1, 2]), false), ("invalid_body", None));
    }

    #[test]
    fn problems_are_reported_in_a_fixed_order() {
        // Keys before values, then customer_name, product_name, status.
        assert_eq!(
            rejected(json!({"customer_name": 7, "staus": "x"}), true),
            ("unknown_field", Some("staus".into()))
        );
        assert_eq!(
            rejected(json!({"product_name": 7}), true),
            ("missing_field", Some("customer_name".into()))
        );
        assert_eq!(
            rejected(json!({"status": "lost", "product_name": ""}), false),
            ("invalid_field", Some("product_name".into()))
        );
    }

    /// The documented bodies have exactly the fields the checks accept.
    #[test]
    fn schemas_name_the_writable_fields() {
        for schema in [OrderInput::schema(), OrderPatch::schema()] {
            let RefOr::T(Schema::Object(object)) = schema else {
                panic!("a body is an object schema");
            };
            let names: Vec<&str> = object.properties.keys().map(String::as_str).collect();
            assert_eq!(names, WRITABLE_FIELDS);
        }
    }
}

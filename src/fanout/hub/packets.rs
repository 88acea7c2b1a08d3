//! The `change` packets of one change: encoded on first use, once per
//! projection, and shared by every socket that gets that shape.
//!
//! Most sockets take whole events, so most changes are encoded once; a
//! socket with `fields` or `old: false` gets the packet of its projection,
//! made by the first socket that needs it. It holds no sockets.

use std::sync::Arc;

use crate::fanout::change::Change;
use crate::fanout::emit::ChangePacket;
use crate::fanout::projection::Projection;

/// The packets made for one change so far; [`Packets::clear`] before the
/// next change (the list keeps its room, so a delivery allocates only the
/// packets it encodes).
#[derive(Debug, Default)]
pub(crate) struct Packets {
    whole: Option<ChangePacket>,
    projected: Vec<(Arc<Projection>, ChangePacket)>,
}

impl Packets {
    /// The packet of `change` shaped by `projection` (`None`: whole).
    pub(crate) fn get(
        &mut self,
        change: &Change,
        projection: Option<&Arc<Projection>>,
    ) -> &ChangePacket {
        let Some(projection) = projection else {
            return self
                .whole
                .get_or_insert_with(|| ChangePacket::new(change.raw()));
        };
        let found = self
            .projected
            .iter()
            .position(|(p, _)| Arc::ptr_eq(p, projection) || **p == **projection);
        let index = found.unwrap_or_else(|| {
            let payload = projection.apply(change.raw());
            self.projected
                .push((projection.clone(), ChangePacket::new(&payload)));
            self.projected.len() - 1
        });
        &self.projected[index].1
    }

    /// Forgets the packets of the last change.
    pub(crate) fn clear(&mut self) {
        self.whole = None;
        self.projected.clear();
    }

    /// How many packets were encoded for the current change.
    #[cfg(test)]
    pub(crate) fn encoded(&self) -> usize {
        usize::from(self.whole.is_some()) + self.projected.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn projection(payload: serde_json::Value) -> Arc<Projection> {
        Arc::new(
            Projection::parse(payload.as_object().unwrap())
                .unwrap()
                .unwrap(),
        )
    }

    #[test]
    fn each_projection_is_encoded_once_and_its_bytes_shared() {
        let change = crate::fanout::hub::tests::change(1, "orders", Some(7), 10);
        // Three sockets asking for the same shape (each its own request),
        // two for whole events, one for another shape.
        let status = [
            projection(json!({"fields": ["note"]})),
            projection(json!({"fields": ["note"]})),
            projection(json!({"fields": ["note", "note"]})),
        ];
        let no_old = projection(json!({"old": false}));
        let mut packets = Packets::default();
        let whole = packets.get(&change, None).payload().as_ptr();
        assert_eq!(packets.get(&change, None).payload().as_ptr(), whole);
        let shared = packets.get(&change, Some(&status[0])).payload().as_ptr();
        for p in &status {
            assert_eq!(packets.get(&change, Some(p)).payload().as_ptr(), shared);
        }
        let other = packets.get(&change, Some(&no_old)).payload().to_owned();
        assert_eq!(packets.encoded(), 3);
        assert_eq!(packets.get(&change, None).payload(), change.raw());
        let v: serde_json::Value = serde_json::from_str(&other).unwrap();
        assert_eq!(v["old"], serde_json::Value::Null);
        packets.clear();
        assert_eq!(packets.encoded(), 0);
    }
}

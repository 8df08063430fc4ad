//! A snapshot's entity and its last delivered event ids packed into one DynamoDB binary, so a
//! typical CRM entity's item is one write unit (1 KB, key and attribute names included).
//! `dynamo` writes every snapshot this way and still reads the older two-attribute items.
//!
//! Layout: a format byte, the delivered events (count, then each id as 16 raw bytes when it is
//! 32 lowercase hex digits, as every relay event id is, else as tagged text; then its time as
//! u32 Unix seconds), then the entity's JSON text as raw deflate primed with a preset
//! dictionary of Bitrix24's field names. A 3.5 KB deal deflates to ~960 B alone and to ~600 B
//! with the dictionary: its field names are written in the dictionary, not in the item.

use relay_core::error::StoreError;
use relay_core::ports::DeliveredEvent;

use miniz_oxide::deflate::core::{
    compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};

/// The first byte of a packed snapshot: which layout and dictionary it was written with.
/// A new dictionary is a new format; every format ever written stays readable.
pub const FORMAT_V1: u8 = 1;

/// Format 1's preset dictionary: one `crm.*.get` answer each for company, contact, lead and
/// deal (the field lists of bitrix24/b24restdocs api-reference/crm/*/crm-*-get.md), keys
/// sorted as serde_json writes them, the deal last (nearest, so cheapest to refer to).
/// Never edit it: items written with it are inflated with it. A test pins its hash.
const DICTIONARY_V1: &[u8] = include_bytes!("packed_snapshot/bitrix24_fields_v1.txt");

/// Best compression: a snapshot is written once per event and its size is what is billed.
const DEFLATE_LEVEL: i32 = 9;
/// An item is at most 400 KB; its entity inflated past this is not a CRM entity.
const MAX_ENTITY_BYTES: usize = 16 * 1024 * 1024;
/// Tag of a delivered id kept as 16 raw bytes (32 lowercase hex digits).
const ID_HEX16: u8 = 0;
/// Tag of a delivered id kept as text: a length byte, then its UTF-8.
const ID_TEXT: u8 = 1;

/// Packs `entity` and `delivered` into one binary value (format 1).
pub fn pack(
    entity: &serde_json::Value,
    delivered: &[DeliveredEvent],
) -> Result<Vec<u8>, StoreError> {
    let count = u8::try_from(delivered.len())
        .map_err(|_| corrupt("more than 255 delivered events to keep"))?;
    let mut out = vec![FORMAT_V1, count];
    for event in delivered {
        match hex16(&event.id) {
            Some(raw) => {
                out.push(ID_HEX16);
                out.extend_from_slice(&raw);
            }
            None => {
                let len = u8::try_from(event.id.len())
                    .map_err(|_| corrupt("a delivered event id is longer than 255 bytes"))?;
                out.extend_from_slice(&[ID_TEXT, len]);
                out.extend_from_slice(event.id.as_bytes());
            }
        }
        let at = u32::try_from(event.at)
            .map_err(|_| corrupt("a delivery time is outside u32 Unix seconds"))?;
        out.extend_from_slice(&at.to_be_bytes());
    }
    deflate_primed(entity.to_string().as_bytes(), DICTIONARY_V1, &mut out)?;
    Ok(out)
}

/// The entity and delivered events of a packed snapshot.
pub fn unpack(packed: &[u8]) -> Result<(serde_json::Value, Vec<DeliveredEvent>), StoreError> {
    let mut rest = packed;
    let format = take(&mut rest, 1)?[0];
    if format != FORMAT_V1 {
        return Err(corrupt(&format!("unknown snapshot format {format}")));
    }
    let count = take(&mut rest, 1)?[0];
    let mut delivered = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let id = match take(&mut rest, 1)?[0] {
            ID_HEX16 => hex::encode(take(&mut rest, 16)?),
            ID_TEXT => {
                let len = take(&mut rest, 1)?[0];
                String::from_utf8(take(&mut rest, usize::from(len))?.to_vec())
                    .map_err(|_| corrupt("a delivered event id is not UTF-8"))?
            }
            tag => return Err(corrupt(&format!("unknown delivered id tag {tag}"))),
        };
        let at = take(&mut rest, 4)?;
        let at = i64::from(u32::from_be_bytes([at[0], at[1], at[2], at[3]]));
        delivered.push(DeliveredEvent { id, at });
    }
    let text = inflate_primed(rest, DICTIONARY_V1)?;
    let entity = serde_json::from_slice(&text)
        .map_err(|e| corrupt(&format!("snapshot entity is not JSON: {e}")))?;
    Ok((entity, delivered))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("packed snapshot: {what}"))
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if rest.len() < n {
        return Err(corrupt("truncated"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// The 16 bytes of a 32-digit lowercase hex id; `None` for any other id (uppercase would not
/// come back as written).
fn hex16(id: &str) -> Option<[u8; 16]> {
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut raw = [0u8; 16];
    hex::decode_to_slice(id, &mut raw).ok()?;
    Some(raw)
}

/// Raw deflate of `data` as if `dictionary` had come before it (zlib's preset dictionary,
/// which miniz_oxide lacks): the compressor takes the dictionary first, flushed to a byte
/// boundary (a sync flush keeps its window), and only what it writes after that is kept.
/// That tail's back-references reach into the dictionary's bytes.
fn deflate_primed(data: &[u8], dictionary: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
    let flags = create_comp_flags_from_zip_params(DEFLATE_LEVEL, 0, 0);
    let mut compressor = CompressorOxide::new(flags);
    let mut primer = Vec::new();
    run_compressor(&mut compressor, dictionary, TDEFLFlush::Sync, &mut primer)?;
    run_compressor(&mut compressor, data, TDEFLFlush::Finish, out)
}

fn run_compressor(
    compressor: &mut CompressorOxide,
    mut input: &[u8],
    flush: TDEFLFlush,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let mut buf = [0u8; 4096];
    loop {
        let (status, used, written) = compress(compressor, input, &mut buf, flush);
        out.extend_from_slice(&buf[..written]);
        input = &input[used..];
        match status {
            TDEFLStatus::Done => return Ok(()),
            // A sync flush is through once the input is taken and the output did not fill.
            TDEFLStatus::Okay if flush != TDEFLFlush::Finish && input.is_empty() => {
                if written < buf.len() {
                    return Ok(());
                }
            }
            TDEFLStatus::Okay => {}
            _ => return Err(corrupt("deflate failed")),
        }
    }
}

/// Inflates a tail written by [`deflate_primed`]: a stored (uncompressed, non-final) block
/// holding the dictionary goes first, so the tail's references into it resolve; the
/// dictionary's bytes are then cut off the output. Any compressor's primer would do: a
/// reference names output bytes, not how they were encoded.
fn inflate_primed(tail: &[u8], dictionary: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(dictionary.len()).map_err(|_| corrupt("dictionary over 64 KB"))?;
    let mut stream = Vec::with_capacity(5 + dictionary.len() + tail.len());
    // BFINAL 0, BTYPE 00 (stored), padded to the byte; then LEN and its complement.
    stream.push(0);
    stream.extend_from_slice(&len.to_le_bytes());
    stream.extend_from_slice(&(!len).to_le_bytes());
    stream.extend_from_slice(dictionary);
    stream.extend_from_slice(tail);
    let mut text = miniz_oxide::inflate::decompress_to_vec_with_limit(
        &stream,
        dictionary.len() + MAX_ENTITY_BYTES,
    )
    .map_err(|e| corrupt(&format!("entity does not inflate: {e}")))?;
    if !text.starts_with(dictionary) {
        return Err(corrupt("entity does not inflate past its dictionary"));
    }
    text.drain(..dictionary.len());
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_v1_dictionary_never_changes() {
        // Items written with format 1 inflate only with these exact bytes.
        assert_eq!(
            hex::encode(Sha256::digest(DICTIONARY_V1)),
            "4ed6986bf8840ead8f77ee5b672febd292279ffad89f0d25778d01b69a6eedc2"
        );
    }

    fn deal() -> serde_json::Value {
        let mut deal = json!({
            "ID": "7", "TITLE": "Поставка №7", "STAGE_ID": "WON", "OPPORTUNITY": "700.00",
            "IS_NEW": "N", "LEAD_ID": null, "DATE_CREATE": "2026-11-01T10:00:00+03:00",
            "UF_CRM_1": [1, 2.5, {"a": null}], "UF_CRM_2": "", "UF_CRM_3": true
        });
        for n in 0..40 {
            deal[format!("UF_CRM_17212444822{n:02}")] = json!(format!("значение {n}"));
        }
        deal
    }

    #[test]
    fn entity_and_deliveries_round_trip_exactly() {
        let delivered = vec![
            DeliveredEvent {
                id: "0123456789abcdef0123456789abcdef".into(),
                at: 1_796_000_000,
            },
            // Not lowercase hex, not 32 long, empty, non-ASCII: kept as text, as written.
            DeliveredEvent {
                id: "0123456789ABCDEF0123456789ABCDEF".into(),
                at: 0,
            },
            DeliveredEvent {
                id: "abc.v2".into(),
                at: i64::from(u32::MAX),
            },
            DeliveredEvent {
                id: String::new(),
                at: 1,
            },
            DeliveredEvent {
                id: "событие".into(),
                at: 2,
            },
        ];
        for entity in [deal(), json!({}), json!({"ID": "1"}), json!(null)] {
            let packed = pack(&entity, &delivered).unwrap();
            assert_eq!(packed[0], FORMAT_V1);
            assert_eq!(unpack(&packed).unwrap(), (entity, delivered.clone()));
        }
        let packed = pack(&deal(), &[]).unwrap();
        assert_eq!(unpack(&packed).unwrap(), (deal(), Vec::new()));
    }

    #[test]
    fn a_hex_id_costs_16_bytes_and_the_dictionary_pays() {
        let one = |id: &str| {
            let d = [DeliveredEvent {
                id: id.into(),
                at: 1_796_000_000,
            }];
            pack(&json!({}), &d).unwrap().len()
        };
        // Text: tag, length, 32 bytes; hex: tag, 16 bytes.
        assert_eq!(one(&"AB".repeat(16)) - one(&"ab".repeat(16)), 17);
        let text = deal().to_string();
        let plain = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 9);
        let mut primed = Vec::new();
        deflate_primed(text.as_bytes(), DICTIONARY_V1, &mut primed).unwrap();
        assert!(
            primed.len() + 50 < plain.len(),
            "primed {} B, plain {} B",
            primed.len(),
            plain.len()
        );
    }

    #[test]
    fn out_of_range_and_broken_input_are_errors() {
        let late = [DeliveredEvent {
            id: "x".into(),
            at: i64::from(u32::MAX) + 1,
        }];
        assert!(pack(&json!({}), &late).is_err());
        let packed = pack(&deal(), &[]).unwrap();
        for broken in [
            &[][..],
            &[2, 0][..],
            &[FORMAT_V1][..],
            &[FORMAT_V1, 1, 7][..],
            &packed[..packed.len() / 2],
        ] {
            assert!(
                matches!(unpack(broken), Err(StoreError::Corrupt(_))),
                "{broken:?}"
            );
        }
    }
}

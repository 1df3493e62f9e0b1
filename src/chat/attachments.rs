//! Images a question carries: `attachments: [{ type: "image", url }]` on `chat:start`
//! (and `chat:edit`, and the SSE start), checked here and passed to the model as they
//! are. A URL is http(s), passed through unfetched (at most [`MAX_HTTP_URL_BYTES`]), or
//! a `data:image/<png|jpeg|gif|webp>;base64,...` URL whose bytes are at most
//! [`MAX_IMAGE_BYTES`] once decoded.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::error::{ChatError, ErrorCode};

/// The most bytes one image may have (a data URL's decoded bytes).
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// The longest http(s) URL accepted, in bytes.
pub const MAX_HTTP_URL_BYTES: usize = 8 * 1024;
/// The image types a data URL may declare.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];
/// The longest a data URL of [`MAX_IMAGE_BYTES`] can be: its base64 (4 characters for 3
/// bytes) and a header (`data:image/jpeg;base64,`) with room to spare.
pub const MAX_DATA_URL_BYTES: usize = MAX_IMAGE_BYTES.div_ceil(3) * 4 + 64;

/// The largest start a client may send with no image: 1 MB, as Node's Socket.IO
/// (`maxHttpBufferSize`).
const START_BYTES: usize = 1_000_000;

/// The largest packet (or body) a start may take with `max_attachments` images of the
/// largest size: 1 MB and a data URL of 5 MiB (about 7 MB of base64) per image.
pub fn max_start_bytes(max_attachments: usize) -> usize {
    START_BYTES + max_attachments * MAX_DATA_URL_BYTES
}

/// One image of a question, by its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub url: String,
}

/// The `attachments` of a payload (absent or `null`: none), at most `max` of them.
/// A limit broken is `INVALID_PARAMS` naming the field; a wrong JSON type `INVALID_PAYLOAD`.
pub fn parse(raw: Option<&Value>, max: usize) -> Result<Vec<Attachment>, ChatError> {
    let items = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ChatError::new(ErrorCode::InvalidPayload, "attachments must be an array")),
    };
    if items.len() > max {
        return Err(params(format!("attachments: at most {max} images")));
    }
    items.iter().enumerate().map(|(i, item)| one(i, item)).collect()
}

fn params(message: String) -> ChatError {
    ChatError::new(ErrorCode::InvalidParams, message)
}

fn one(i: usize, item: &Value) -> Result<Attachment, ChatError> {
    let Value::Object(fields) = item else {
        return Err(ChatError::new(ErrorCode::InvalidPayload, format!("attachments[{i}] must be an object")));
    };
    if fields.get("type").and_then(Value::as_str) != Some("image") {
        return Err(params(format!("attachments[{i}].type must be \"image\"")));
    }
    let Some(Value::String(url)) = fields.get("url") else {
        return Err(ChatError::new(ErrorCode::InvalidPayload, format!("attachments[{i}].url must be a string")));
    };
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    match scheme.as_str() {
        "http" | "https" => {
            let uri = url.parse::<http::Uri>().ok().filter(|u| u.authority().is_some());
            if url.len() > MAX_HTTP_URL_BYTES {
                return Err(params(format!("attachments[{i}].url is longer than {MAX_HTTP_URL_BYTES} bytes")));
            }
            if uri.is_none() {
                return Err(params(format!("attachments[{i}].url is not a valid http(s) URL")));
            }
        }
        "data" => data_url(i, url)?,
        _ => return Err(params(format!("attachments[{i}].url must be an http(s) or data:image URL"))),
    }
    Ok(Attachment { url: url.clone() })
}

/// A data URL of an allowed image type, valid base64, at most [`MAX_IMAGE_BYTES`].
fn data_url(i: usize, url: &str) -> Result<(), ChatError> {
    let (header, payload) = url["data:".len()..].split_once(',').unwrap_or_default();
    let Some(kind) = header.strip_suffix(";base64") else {
        return Err(params(format!("attachments[{i}].url must be a base64 data URL (data:image/png;base64,...)")));
    };
    if !IMAGE_TYPES.contains(&kind.to_ascii_lowercase().as_str()) {
        return Err(params(format!("attachments[{i}].url must be an image/png, image/jpeg, image/gif or image/webp data URL")));
    }
    let too_big = || params(format!("attachments[{i}] is larger than {MAX_IMAGE_BYTES} bytes"));
    // Checked before decoding: no more than the limit is ever decoded.
    if payload.len() > MAX_IMAGE_BYTES.div_ceil(3) * 4 {
        return Err(too_big());
    }
    match STANDARD.decode(payload) {
        Ok(bytes) if bytes.len() > MAX_IMAGE_BYTES => Err(too_big()),
        Ok(bytes) if bytes.is_empty() => Err(params(format!("attachments[{i}].url holds no image"))),
        Ok(_) => Ok(()),
        Err(_) => Err(params(format!("attachments[{i}].url is not valid base64"))),
    }
}

/// The attachments as stored with the message: `[{ "type": "image", "url" }]`; `None`
/// for a question without any.
pub fn to_stored(attachments: &[Attachment]) -> Option<String> {
    (!attachments.is_empty())
        .then(|| Value::Array(attachments.iter().map(|a| json!({ "type": "image", "url": a.url })).collect()).to_string())
}

/// The attachments of a stored `attachments` column (anything unreadable counts as none).
pub fn stored(column: Option<&str>) -> Vec<Attachment> {
    stored_urls(column).into_iter().map(|url| Attachment { url }).collect()
}

/// The image URLs of a stored `attachments` column (anything unreadable counts as none).
pub fn stored_urls(stored: Option<&str>) -> Vec<String> {
    let Some(Value::Array(items)) = stored.and_then(|s| serde_json::from_str(s).ok()) else {
        return Vec::new();
    };
    items.iter().filter_map(|a| a.get("url").and_then(Value::as_str)).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(url: &str) -> Value {
        json!({ "type": "image", "url": url })
    }

    fn refused(raw: Value) -> (ErrorCode, String) {
        let e = parse(Some(&raw), 4).unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn http_and_data_urls_pass_and_are_stored_as_sent() {
        let png = format!("data:image/png;base64,{}", STANDARD.encode(b"\x89PNG fake"));
        let parsed = parse(Some(&json!([image("https://example.com/cat.png"), image(&png)])), 4).unwrap();
        assert_eq!(parsed.iter().map(|a| a.url.as_str()).collect::<Vec<_>>(), ["https://example.com/cat.png", png.as_str()]);
        let stored = to_stored(&parsed).unwrap();
        assert_eq!(stored_urls(Some(&stored)), ["https://example.com/cat.png", png.as_str()]);
        assert_eq!(to_stored(&[]), None);
        assert_eq!(parse(None, 4).unwrap(), Vec::new());
    }

    #[test]
    fn each_breach_names_its_field() {
        let five: Vec<Value> = (0..5).map(|_| image("http://x.io/a.png")).collect();
        assert_eq!(refused(json!(five)), (ErrorCode::InvalidParams, "attachments: at most 4 images".into()));
        let ok = image("http://x.io/a.png");
        let svg = format!("data:image/svg+xml;base64,{}", STANDARD.encode("<svg/>"));
        let cases = [
            (json!([ok, { "type": "file", "url": "http://x.io/a" }]), "attachments[1].type must be \"image\""),
            (json!([image("ftp://x.io/a.png")]), "attachments[0].url must be an http(s) or data:image URL"),
            (json!([image(&svg)]), "attachments[0].url must be an image/png, image/jpeg, image/gif or image/webp data URL"),
            (json!([image("data:image/png;base64,not*base64")]), "attachments[0].url is not valid base64"),
            (json!([image("data:image/png,rawbytes")]), "attachments[0].url must be a base64 data URL (data:image/png;base64,...)"),
            (json!([image(&format!("http://x.io/{}", "a".repeat(MAX_HTTP_URL_BYTES)))]), "attachments[0].url is longer than 8192 bytes"),
            (json!([image("http://")]), "attachments[0].url is not a valid http(s) URL"),
        ];
        for (raw, message) in cases {
            assert_eq!(refused(raw), (ErrorCode::InvalidParams, message.to_owned()));
        }
        let big = format!("data:image/jpeg;base64,{}", STANDARD.encode(vec![0u8; MAX_IMAGE_BYTES + 1]));
        assert_eq!(refused(json!([image(&big)])), (ErrorCode::InvalidParams, "attachments[0] is larger than 5242880 bytes".into()));
        let largest = format!("data:image/jpeg;base64,{}", STANDARD.encode(vec![0u8; MAX_IMAGE_BYTES]));
        assert!(largest.len() <= MAX_DATA_URL_BYTES);
        assert_eq!(parse(Some(&json!([image(&largest)])), 4).unwrap().len(), 1);
        assert_eq!(refused(json!("x")).0, ErrorCode::InvalidPayload);
        assert_eq!(refused(json!([5])).0, ErrorCode::InvalidPayload);
        assert_eq!(refused(json!([{ "type": "image", "url": 5 }])).0, ErrorCode::InvalidPayload);
    }
}

//! Pure helpers of the proxy's emulated provider quirks: reading a request's query and an
//! XML body, opaque ETags (not MD5s, as several providers return) and their way back.

/// The value of query parameter `name` of a request target.
pub fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// The texts of every `<tag>…</tag>` of an XML document, in order.
pub fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// Splits an ETag's quoting (`"…"` or `&quot;…&quot;`) from its core.
fn unquote(etag: &str) -> (&str, &str) {
    for q in ["&quot;", "\""] {
        if let Some(core) = etag.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return (q, core);
        }
    }
    ("", etag)
}

/// The opaque form of an ETag: `opq` and the hex of its core, quoting kept. Not an MD5, no
/// dash (so no part count), and reversible.
pub fn opaque(etag: &str) -> String {
    let (q, core) = unquote(etag);
    let hex: String = core.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{q}opq{hex}{q}")
}

/// The server's ETag behind an opaque one; other ETags unchanged.
pub fn real(etag: &str) -> String {
    let (q, core) = unquote(etag);
    let decoded = core.strip_prefix("opq").and_then(|hex| {
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    });
    match decoded {
        Some(core) => format!("{q}{core}{q}"),
        None => etag.to_string(),
    }
}

/// `xml` with the text of every `<ETag>` mapped by `f`.
pub fn map_etags(xml: &str, f: impl Fn(&str) -> String) -> String {
    let (open, close) = ("<ETag>", "</ETag>");
    let mut out = String::with_capacity(xml.len() + 64);
    let mut rest = xml;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(close) else { break };
        out.push_str(&rest[..i + open.len()]);
        out.push_str(&f(&after[..j]));
        out.push_str(close);
        rest = &after[j + close.len()..];
    }
    out.push_str(rest);
    out
}

/// A message's head with `Content-Length` set to `len` and each ETag header mapped by `f`.
pub fn rewrite_head(head: &str, len: Option<usize>, f: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(head.len() + 32);
    for line in head.split_inclusive("\r\n") {
        let bare = line.trim_end_matches("\r\n");
        match bare.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("content-length") && len.is_some() => {
                out.push_str(&format!("{name}: {}\r\n", len.unwrap_or(0)));
            }
            Some((name, value)) if name.eq_ignore_ascii_case("etag") => {
                out.push_str(&format!("{name}: {}\r\n", f(value.trim())));
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// R2's rule at CompleteMultipartUpload: every part but the last has one size, the last no
/// larger. `sizes` in the order the parts are listed. Err: the message R2 answers.
pub fn equal_parts(sizes: &[u64]) -> Result<(), &'static str> {
    let Some((&first, _)) = sizes.split_first() else {
        return Ok(());
    };
    let (last, middle) = sizes.split_last().unwrap_or((&first, &[]));
    if middle.iter().any(|s| *s != first) || *last > first {
        Err("All non-trailing parts must have the same length.")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_xml() {
        let t = "/b/k?partNumber=12&uploadId=abc%2Fd";
        assert_eq!(query_param(t, "partNumber"), Some("12"));
        assert_eq!(query_param(t, "uploadId"), Some("abc%2Fd"));
        assert_eq!(query_param(t, "upload"), None);
        assert_eq!(query_param("/b/k", "uploadId"), None);
        let xml = "<a><PartNumber>1</PartNumber><ETag>x</ETag><PartNumber>2</PartNumber></a>";
        assert_eq!(xml_values(xml, "PartNumber"), ["1", "2"]);
        assert_eq!(xml_values("<UploadId>u-1</UploadId>", "UploadId"), ["u-1"]);
    }

    #[test]
    fn opaque_etags_round_trip_and_are_not_md5s() {
        for e in [
            "\"9b2cf535f27731c974343645a3985328\"",
            "&quot;0cc175b9c0f1b6a831c399e269772661-3&quot;",
            "plain",
        ] {
            let o = opaque(e);
            assert_ne!(o, e);
            assert!(!o.contains('-'), "{o}");
            assert_eq!(real(&o), e);
        }
        assert_eq!(real("\"abc\""), "\"abc\"");
        let xml = "<R><ETag>&quot;a1&quot;</ETag><X/><ETag>\"b-2\"</ETag></R>";
        let mapped = map_etags(xml, opaque);
        assert_eq!(
            mapped,
            "<R><ETag>&quot;opq6131&quot;</ETag><X/><ETag>\"opq622d32\"</ETag></R>"
        );
        assert_eq!(map_etags(&mapped, real), xml);
        let head = "HTTP/1.1 200 OK\r\nETag: \"ab\"\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            rewrite_head(head, Some(9), &opaque),
            "HTTP/1.1 200 OK\r\nETag: \"opq6162\"\r\nContent-Length: 9\r\n\r\n"
        );
    }

    #[test]
    fn equal_parts_as_r2_wants() {
        assert!(equal_parts(&[]).is_ok());
        assert!(equal_parts(&[7]).is_ok());
        assert!(equal_parts(&[5, 5, 5]).is_ok());
        assert!(equal_parts(&[5, 5, 2]).is_ok());
        assert!(equal_parts(&[5, 6, 2]).is_err());
        assert!(equal_parts(&[5, 6]).is_err());
        assert!(equal_parts(&[6, 5, 5, 1]).is_err());
    }
}

//! Postgres array literals (`array_out` text) → nested JSON arrays.
//!
//! Handles what `array_out` emits: `{1,2,3}`, nested `{{1,2},{3,4}}`,
//! unquoted `NULL` elements, quoted elements with backslash escapes
//! (`{"a,b","say \"hi\""}`), a custom delimiter (`;` for `box[]`) and the
//! dimension decoration written when a lower bound is not 1
//! (`[0:2]={1,2,3}`), which is dropped: JSON arrays start at 0 anyway.
//!
//! It only splits the literal and writes the brackets, commas and `null`s;
//! each element's text is handed to the caller's writer (`value`). It does
//! not check that nested arrays are rectangular: Postgres already guaranteed
//! that.

use std::borrow::Cow;

/// Deeper nesting than this is not a Postgres array (MAXDIM is 6); the limit
/// keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 16;

/// Writes `text`, an array literal, as a JSON array to `out`, each non-null
/// element written by `element`. `None` if the text is not a well-formed
/// array literal; `out` then holds a partial array the caller must discard.
pub(crate) fn write_json(
    text: &str,
    delimiter: u8,
    out: &mut Vec<u8>,
    element: &mut dyn FnMut(&str, &mut Vec<u8>),
) -> Option<()> {
    let mut parser = Parser {
        text,
        pos: 0,
        delimiter,
    };
    parser.skip_dimensions()?;
    parser.skip_whitespace();
    parser.array(0, out, element)?;
    parser.skip_whitespace();
    (parser.pos == text.len()).then_some(())
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    delimiter: u8,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `[lower:upper]` once per dimension, then `=`; absent when every
    /// lower bound is 1.
    fn skip_dimensions(&mut self) -> Option<()> {
        if self.peek() != Some(b'[') {
            return Some(());
        }
        while self.eat(b'[').is_some() {
            self.bound()?;
            self.eat(b':')?;
            self.bound()?;
            self.eat(b']')?;
        }
        self.eat(b'=')
    }

    fn bound(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        (self.pos > start).then_some(())
    }

    /// `{ element (delim element)* }` or `{}`; the cursor is on `{`.
    fn array(
        &mut self,
        depth: usize,
        out: &mut Vec<u8>,
        element: &mut dyn FnMut(&str, &mut Vec<u8>),
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        out.push(b'[');
        self.skip_whitespace();
        if self.eat(b'}').is_some() {
            out.push(b']');
            return Some(());
        }
        loop {
            self.skip_whitespace();
            match self.peek()? {
                b'{' => self.array(depth + 1, out, element)?,
                b'"' => element(&self.quoted()?, out),
                _ => match self.unquoted()? {
                    text if text.eq_ignore_ascii_case("NULL") => out.extend_from_slice(b"null"),
                    text => element(&text, out),
                },
            }
            self.skip_whitespace();
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    out.push(b']');
                    return Some(());
                }
                b if b == self.delimiter => {
                    self.pos += 1;
                    out.push(b',');
                }
                _ => return None,
            }
        }
    }

    /// `"…"` with `\x` meaning `x`; borrows when there is nothing to unescape.
    fn quoted(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run_start = start;
        loop {
            match self.peek()? {
                b'"' => {
                    let tail = self.text.get(run_start..self.pos)?;
                    self.pos += 1;
                    return Some(match owned {
                        Some(mut text) => {
                            text.push_str(tail);
                            Cow::Owned(text)
                        }
                        None => Cow::Borrowed(tail),
                    });
                }
                b'\\' => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(self.text.get(run_start..self.pos)?);
                    self.pos += 1;
                    // The escaped character may be multi-byte UTF-8.
                    let escaped = self.text.get(self.pos..)?.chars().next()?;
                    text.push(escaped);
                    self.pos += escaped.len_utf8();
                    run_start = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Text up to the delimiter or `}`; trailing whitespace is not part of
    /// it (array_out quotes any element that has some).
    fn unquoted(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run_start = start;
        loop {
            match self.peek()? {
                b'}' | b'{' | b'"' => break,
                b if b == self.delimiter => break,
                b'\\' => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(self.text.get(run_start..self.pos)?);
                    self.pos += 1;
                    let escaped = self.text.get(self.pos..)?.chars().next()?;
                    text.push(escaped);
                    self.pos += escaped.len_utf8();
                    run_start = self.pos;
                }
                _ => self.pos += 1,
            }
        }
        let tail = self.text.get(run_start..self.pos)?;
        let text = match owned {
            Some(mut text) => {
                text.push_str(tail);
                Cow::Owned(text.trim_end().to_owned())
            }
            None => Cow::Borrowed(tail.trim_end()),
        };
        // An empty unquoted element is not valid array syntax.
        (!text.is_empty()).then_some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::json;

    /// The literal as a JSON array of strings, `None` if it is not one.
    fn text_array_with(text: &str, delimiter: u8) -> Option<String> {
        let mut out = Vec::new();
        write_json(text, delimiter, &mut out, &mut |element, out| {
            json::write_str(out, element)
        })?;
        Some(String::from_utf8(out).unwrap())
    }

    fn text_array(text: &str) -> Option<String> {
        text_array_with(text, b',')
    }

    fn some(json: &str) -> Option<String> {
        Some(json.to_owned())
    }

    #[test]
    fn flat_nested_empty_and_null() {
        assert_eq!(text_array("{}"), some("[]"));
        assert_eq!(
            text_array("{a,NULL,null,b}"),
            some(r#"["a",null,null,"b"]"#)
        );
        assert_eq!(
            text_array("{{a,b},{c,d}}"),
            some(r#"[["a","b"],["c","d"]]"#)
        );
    }

    #[test]
    fn quoted_elements_unescape_and_are_never_null() {
        assert_eq!(
            text_array(r#"{"a,b","say \"hi\"","back\\slash","NULL","","{}"}"#),
            some(r#"["a,b","say \"hi\"","back\\slash","NULL","","{}"]"#)
        );
        assert_eq!(text_array(r#"{"\é x",ü}"#), some(r#"["é x","ü"]"#));
    }

    #[test]
    fn dimension_decoration_is_dropped() {
        assert_eq!(text_array("[0:2]={1,2,3}"), some(r#"["1","2","3"]"#));
        assert_eq!(
            text_array("[-1:0][1:1]={{x},{y}}"),
            some(r#"[["x"],["y"]]"#)
        );
    }

    #[test]
    fn custom_delimiter() {
        assert_eq!(
            text_array_with("{(1,1),(0,0);(2,2),(1,1)}", b';'),
            some(r#"["(1,1),(0,0)","(2,2),(1,1)"]"#)
        );
    }

    #[test]
    fn malformed_literals_are_rejected() {
        for bad in [
            "",
            "{",
            "}",
            "{a",
            "{a,}",
            "{,a}",
            "{\"a}",
            "{a}x",
            "[0:2]{1}",
            "[x:1]={1}",
            "{a\\",
            "{a\"b\"}",
            "1,2",
        ] {
            assert_eq!(text_array(bad), None, "{bad:?}");
        }
        let deep = format!("{}{}", "{".repeat(100), "}".repeat(100));
        assert_eq!(text_array(&deep), None);
    }
}

//! Path templates of an OpenAPI description and the matching of concrete request paths
//! against them.
//!
//! This module owns the routing half of the checker: parsing `/v9/projects/{idOrName}` or
//! `/v1/{name}:run` into segments, deciding whether a concrete path fits, and ranking the
//! templates when several fit, so that a literal route such as `/projects/shared` wins over
//! `/projects/{id}` the way the providers' own routers resolve it.

/// One piece of a template segment: text that must appear verbatim, or a `{param}` that
/// stands for at least one character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Param,
}

/// One `/`-separated segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// The whole segment is literal text, compared exactly.
    Literal(String),
    /// The segment holds at least one `{param}`, possibly between literal text
    /// (`{id}:wait`, `v{major}.{minor}`).
    Pattern(Vec<Piece>),
}

/// A parsed path template, e.g. `/v10/projects/{idOrName}/env`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    /// Segments that are entirely literal: the primary ranking key (more is more specific).
    literal_segments: usize,
    /// Literal characters inside partly literal segments: breaks ties between, say,
    /// `/{id}:wait` and `/{id}`.
    literal_chars: usize,
}

impl Template {
    pub(crate) fn parse(text: &str) -> Self {
        let segments: Vec<Segment> = text.split('/').map(parse_segment).collect();
        let literal_segments = segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let literal_chars = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Pattern(pieces) => pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Literal(l) => l.len(),
                        Piece::Param => 0,
                    })
                    .sum(),
            })
            .sum();
        Template {
            segments,
            literal_segments,
            literal_chars,
        }
    }

    /// Ranking key: the greater key is the more specific template.
    pub(crate) fn specificity(&self) -> (usize, usize) {
        (self.literal_segments, self.literal_chars)
    }

    /// Whether `path` (already free of host and query) is an instance of this template.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match segment {
                Segment::Literal(literal) => literal == part,
                Segment::Pattern(pieces) => match_pieces(pieces, part),
            };
            if !fits {
                return false;
            }
        }
        parts.next().is_none()
    }
}

fn parse_segment(text: &str) -> Segment {
    if !text.contains('{') {
        return Segment::Literal(text.to_owned());
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            // An unbalanced brace is literal text; the template is malformed but still usable.
            break;
        };
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_owned()));
        }
        pieces.push(Piece::Param);
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Segment::Pattern(pieces)
}

/// Matches one concrete segment against literal pieces and parameters. A parameter takes
/// one or more characters; when two parameters or a parameter and a suffix compete, every
/// split is tried (segments are short, so the backtracking stays cheap).
fn match_pieces(pieces: &[Piece], text: &str) -> bool {
    match pieces.split_first() {
        None => text.is_empty(),
        Some((Piece::Literal(literal), rest)) => text
            .strip_prefix(literal.as_str())
            .is_some_and(|after| match_pieces(rest, after)),
        Some((Piece::Param, rest)) => text
            .char_indices()
            .skip(1)
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .filter(|&i| i > 0)
            .any(|i| match_pieces(rest, &text[i..])),
    }
}

#[cfg(test)]
mod tests {
    use super::Template;

    #[test]
    fn whole_segment_parameters_need_a_non_empty_segment() {
        let t = Template::parse("/v9/projects/{idOrName}");
        assert!(t.matches("/v9/projects/prj_1"));
        assert!(!t.matches("/v9/projects/"));
        assert!(!t.matches("/v9/projects"));
        assert!(!t.matches("/v9/projects/prj_1/env"));
    }

    #[test]
    fn partly_literal_segments_match_prefix_and_suffix() {
        let t = Template::parse("/v1/{name}:wait");
        assert!(t.matches("/v1/op-1:wait"));
        assert!(!t.matches("/v1/:wait"));
        assert!(!t.matches("/v1/op-1"));
        let two = Template::parse("/x/v{major}.{minor}");
        assert!(two.matches("/x/v1.2"));
        assert!(two.matches("/x/v1.2.3"));
        assert!(!two.matches("/x/v1."));
    }

    #[test]
    fn literal_templates_rank_above_parameterised_ones() {
        let literal = Template::parse("/projects/shared");
        let param = Template::parse("/projects/{id}");
        let suffixed = Template::parse("/projects/{id}:wait");
        assert!(literal.specificity() > param.specificity());
        assert!(suffixed.specificity() > param.specificity());
    }
}

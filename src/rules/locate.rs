//! Finds the line of a field in a YAML document (`rules[0].when[1].error_rate.above` → 14), so
//! that validation errors found after deserialising can still name file, line and field.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Locator {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Locator {
    /// The path of the value starting here, recording its line.
    fn value_path(&mut self, mark: Marker) -> String {
        let path = match self.stack.last() {
            Some(Frame::Map { path, key: Some(key) }) => join(path, key),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
            _ => String::new(),
        };
        self.lines.entry(path.clone()).or_insert(mark.line());
        path
    }

    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

impl MarkedEventReceiver for Locator {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.after_value();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key: key @ None }) = self.stack.last_mut() {
                    self.lines.insert(join(path, &value), mark.line());
                    *key = Some(value);
                } else {
                    self.value_path(mark);
                    self.after_value();
                }
            }
            Event::Alias(_) => {
                self.value_path(mark);
                self.after_value();
            }
            _ => {}
        }
    }
}

/// Maps every field path in `source` to its (1-based) line. Empty when the YAML does not parse.
pub fn lines(source: &str) -> HashMap<String, usize> {
    let mut locator = Locator::default();
    let mut parser = Parser::new_from_str(source);
    if parser.load(&mut locator, false).is_err() {
        return HashMap::new();
    }
    locator.lines
}

/// The line of `path`, or of its nearest ancestor that has one.
pub fn line_of(lines: &HashMap<String, usize>, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(line) = lines.get(p) {
            return Some(*line);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_to_lines() {
        let src = "rules:\n  - name: a\n    when:\n      - error_rate: { above: 2 }\n      - latency:\n          quantile: 0.9\n";
        let lines = lines(src);
        assert_eq!(line_of(&lines, "rules[0].name"), Some(2));
        assert_eq!(line_of(&lines, "rules[0].when[0].error_rate.above"), Some(4));
        assert_eq!(line_of(&lines, "rules[0].when[1].latency.quantile"), Some(6));
        assert_eq!(line_of(&lines, "rules[0].when[1].latency.above_ms"), Some(5), "falls back to the parent");
    }
}

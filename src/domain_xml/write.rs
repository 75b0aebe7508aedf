//! Writes a tree back with quick-xml's `Writer`, indenting element-only content by two spaces.
//!
//! Only whitespace between elements is rewritten: text of leaf elements, mixed content
//! (text next to elements) and subtrees under `xml:space="preserve"` are written exactly as
//! they were read. Start tags keep their raw attribute text. The result is deterministic.

use quick_xml::Writer;
use quick_xml::events::{BytesText, Event};

use super::tree::{Document, Element, Node, is_xml_whitespace};

const INDENT: &str = "  ";

/// Serializes a document; it always ends with a line feed.
pub(crate) fn write_document(doc: &Document<'_>) -> String {
    let mut w = Writer::new(Vec::new());
    for node in &doc.prolog {
        write_node(&mut w, node, 0, false);
        newline(&mut w, 0);
    }
    write_element(&mut w, &doc.root, 0, false);
    for node in &doc.epilog {
        newline(&mut w, 0);
        write_node(&mut w, node, 0, false);
    }
    newline(&mut w, 0);
    // Every byte written comes from `&str` input or from Rust strings: always UTF-8.
    String::from_utf8(w.into_inner()).expect("quick-xml wrote UTF-8 input as UTF-8")
}

/// Writes one event. Writing into a `Vec` cannot fail.
fn emit(w: &mut Writer<Vec<u8>>, event: Event<'_>) {
    w.write_event(event)
        .expect("writing XML into a Vec<u8> cannot fail");
}

/// A line feed and the indentation of `depth`.
fn newline(w: &mut Writer<Vec<u8>>, depth: usize) {
    let mut s = String::with_capacity(1 + INDENT.len() * depth);
    s.push('\n');
    for _ in 0..depth {
        s.push_str(INDENT);
    }
    emit(w, Event::Text(BytesText::from_escaped(s)));
}

fn write_node(w: &mut Writer<Vec<u8>>, node: &Node<'_>, depth: usize, verbatim: bool) {
    match node {
        Node::Element(e) => write_element(w, e, depth, verbatim),
        Node::Text(t) => emit(w, Event::Text(t.borrow())),
        Node::CData(c) => emit(w, Event::CData(c.borrow())),
        Node::Comment(c) => emit(w, Event::Comment(c.borrow())),
        Node::Pi(p) => emit(w, Event::PI(p.borrow())),
        Node::Decl(d) => emit(w, Event::Decl(d.borrow())),
        Node::Ref(r) => emit(w, Event::GeneralRef(r.borrow())),
    }
}

/// Whether the children are elements, comments and processing instructions separated only by
/// whitespace: that whitespace carries no meaning and is replaced by indentation.
fn element_only(e: &Element<'_>) -> bool {
    let mut structural = false;
    for child in &e.children {
        match child {
            Node::Text(t) if is_xml_whitespace(t) => {}
            Node::Text(_) | Node::CData(_) | Node::Ref(_) => return false,
            Node::Element(_) | Node::Comment(_) | Node::Pi(_) | Node::Decl(_) => structural = true,
        }
    }
    structural
}

fn write_element(w: &mut Writer<Vec<u8>>, e: &Element<'_>, depth: usize, verbatim: bool) {
    if e.children.is_empty() {
        emit(w, Event::Empty(e.start.borrow()));
        return;
    }
    emit(w, Event::Start(e.start.borrow()));
    let verbatim = verbatim || e.attr_exact("xml:space").as_deref() == Some("preserve") || !element_only(e);
    if verbatim {
        for child in &e.children {
            write_node(w, child, depth + 1, true);
        }
    } else {
        for child in &e.children {
            if matches!(child, Node::Text(_)) {
                continue; // whitespace only, see element_only
            }
            newline(w, depth + 1);
            write_node(w, child, depth + 1, false);
        }
        newline(w, depth);
    }
    emit(w, Event::End(e.start.to_end()));
}

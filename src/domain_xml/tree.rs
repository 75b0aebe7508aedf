//! A small XML tree built from quick-xml reader events, and the checks that make a base XML
//! acceptable: well-formed, one `<domain>` root, no DOCTYPE, no entities but the predefined
//! ones, declared namespace prefixes, bounded nesting.
//!
//! The tree keeps every event as the reader produced it (start tags with their raw attribute
//! text, text, CDATA, comments, processing instructions, character and entity references), so
//! writing it back reproduces the input apart from insignificant whitespace between elements.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesCData, BytesDecl, BytesPI, BytesRef, BytesStart, BytesText, Event};

use super::DomainXmlError;

/// Namespace that the `xml:` prefix is always bound to.
const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// Deepest element nesting accepted (libxml2's default limit too). Keeps the recursive
/// walks over the tree far from any stack limit.
pub(crate) const MAX_DEPTH: usize = 256;

/// A parsed document: what precedes the root, the root, what follows it.
#[derive(Debug, Clone)]
pub(crate) struct Document<'a> {
    /// XML declaration, comments and processing instructions before the root.
    pub(crate) prolog: Vec<Node<'a>>,
    pub(crate) root: Element<'a>,
    /// Comments and processing instructions after the root.
    pub(crate) epilog: Vec<Node<'a>>,
}

/// One child of an element (or of the document, outside the root).
#[derive(Debug, Clone)]
pub(crate) enum Node<'a> {
    Element(Element<'a>),
    /// Character data as written (never contains `&` or `<`: references are separate nodes).
    Text(BytesText<'a>),
    CData(BytesCData<'a>),
    Comment(BytesText<'a>),
    Pi(BytesPI<'a>),
    Decl(BytesDecl<'a>),
    /// `&name;` or `&#...;` (only predefined entities and valid character references).
    Ref(BytesRef<'a>),
}

/// An element: its start tag exactly as written, its namespace and its children.
#[derive(Debug, Clone)]
pub(crate) struct Element<'a> {
    /// Name and raw attributes, written back verbatim.
    pub(crate) start: BytesStart<'a>,
    /// Namespace URI the element's name resolves to (`None`: no namespace).
    pub(crate) ns: Option<String>,
    /// 1-based line of the start tag in the input; 0 for elements the operator creates.
    pub(crate) line: usize,
    pub(crate) children: Vec<Node<'a>>,
}

impl<'a> Element<'a> {
    /// A new element without namespace, attributes or children.
    pub(crate) fn new(name: &str) -> Element<'static> {
        Element {
            start: BytesStart::new(name.to_owned()),
            ns: None,
            line: 0,
            children: Vec::new(),
        }
    }

    /// Adds an attribute; quick-xml escapes the value.
    pub(crate) fn with_attr(mut self, key: &str, value: &str) -> Self {
        self.start.push_attribute((key, value));
        self
    }

    /// Adds a child element.
    pub(crate) fn with_child(mut self, child: Element<'a>) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Adds a text child; quick-xml escapes it.
    pub(crate) fn with_text(mut self, text: &str) -> Self {
        self.children.push(Node::Text(BytesText::new(text).into_owned()));
        self
    }

    /// The qualified name as written (`prefix:local` or `local`).
    pub(crate) fn qname(&self) -> &str {
        self.start.name().0
    }

    /// The local part of the name.
    pub(crate) fn local_name(&self) -> &str {
        let q = self.qname();
        q.rsplit_once(':').map_or(q, |(_, local)| local)
    }

    /// Whether the element has local name `local`, whatever its prefix or namespace. libvirt
    /// matches many elements by local name alone, so the device policy does too.
    pub(crate) fn is(&self, local: &str) -> bool {
        self.local_name() == local
    }

    /// Whether the element is `<name>` exactly: no prefix and no namespace, which is how
    /// libvirt's XPath lookups (`./uuid`, `./memory`, `./devices`) see it.
    pub(crate) fn is_plain(&self, name: &str) -> bool {
        self.ns.is_none() && self.qname() == name
    }

    /// Attributes as (qualified name, normalized value), namespace declarations included.
    /// Attributes were validated while parsing; operator-made ones are valid by construction.
    pub(crate) fn attributes(&self) -> Vec<(String, String)> {
        self.start
            .attributes()
            .filter_map(Result::ok)
            .filter_map(|a| {
                let value = normalized_value(&a).ok()?;
                Some((a.key.0.to_owned(), value.into_owned()))
            })
            .collect()
    }

    /// Values of every attribute whose local name is `local`, whatever its prefix (libxml2's
    /// `xmlGetProp`, which libvirt uses, ignores namespaces), namespace declarations excluded.
    pub(crate) fn attr_values(&self, local: &str) -> Vec<String> {
        self.attributes()
            .into_iter()
            .filter(|(key, _)| {
                let attr_local = key.rsplit_once(':').map_or(key.as_str(), |(_, l)| l);
                attr_local == local && key != "xmlns" && !key.starts_with("xmlns:")
            })
            .map(|(_, value)| value)
            .collect()
    }

    /// The value of the attribute with exactly this qualified name.
    pub(crate) fn attr_exact(&self, qname: &str) -> Option<String> {
        self.attributes()
            .into_iter()
            .find(|(key, _)| key == qname)
            .map(|(_, value)| value)
    }

    /// Whether some attribute with local name `local` has a value `pred` accepts.
    pub(crate) fn attr_any(&self, local: &str, pred: impl Fn(&str) -> bool) -> bool {
        self.attr_values(local).iter().any(|v| pred(v))
    }

    /// Whether some attribute with local name `local` is present.
    pub(crate) fn has_attr(&self, local: &str) -> bool {
        !self.attr_values(local).is_empty()
    }

    /// Child elements.
    pub(crate) fn elements(&self) -> impl Iterator<Item = &Element<'a>> {
        self.children.iter().filter_map(|c| match c {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Child elements with local name `local` (any namespace).
    pub(crate) fn elements_named<'s>(&'s self, local: &'s str) -> impl Iterator<Item = &'s Element<'a>> + 's {
        self.elements().filter(move |e| e.is(local))
    }

    /// The character data directly inside the element (text, CDATA and resolved references
    /// concatenated; line ends normalized), ignoring child elements.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for child in &self.children {
            match child {
                Node::Text(t) => out.push_str(&t.xml10_content()),
                Node::CData(c) => out.push_str(&c.xml10_content()),
                Node::Ref(r) => {
                    if let Some(resolved) = resolve_reference(r) {
                        out.push(resolved);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the element has non-whitespace character data.
    pub(crate) fn has_text(&self) -> bool {
        !is_xml_whitespace(&self.text())
    }
}

/// XML's whitespace: space, tab, carriage return, line feed.
pub(crate) fn is_xml_whitespace(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// Trims XML whitespace (not Unicode whitespace).
pub(crate) fn trim_xml(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// The five entities XML predefines; nothing else (no HTML entities, no DTD).
fn predefined_entity(name: &str) -> Option<&'static str> {
    quick_xml::escape::resolve_xml_entity(name)
}

/// The character a reference stands for, if it is predefined or a valid character reference.
fn resolve_reference(r: &BytesRef<'_>) -> Option<char> {
    if r.is_char_ref() {
        r.resolve_char_ref().ok().flatten()
    } else {
        predefined_entity(r).and_then(|s| s.chars().next())
    }
}

/// An attribute value with references resolved and whitespace normalized as XML says.
fn normalized_value<'v>(a: &Attribute<'v>) -> quick_xml::Result<Cow<'v, str>> {
    a.normalized_value_with(XmlVersion::Implicit1_0, 1, predefined_entity)
}

/// Characters XML 1.0 allows in a document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Whether `s` is an NCName (a name without colon). ASCII is checked exactly; other
/// characters are accepted except in first position for the few that can never start a name.
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let start_ok = first.is_ascii_alphabetic()
        || first == '_'
        || (!first.is_ascii()
            && !matches!(first, '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}'));
    start_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii())
}

/// Whether `s` is a qualified name: `local` or `prefix:local`.
fn is_qname(s: &str) -> bool {
    match s.split_once(':') {
        None => is_ncname(s),
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
    }
}

/// Maps byte offsets of the input to 1-based lines and columns.
pub(crate) struct LineIndex<'a> {
    input: &'a str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(input: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(input.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { input, starts }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }

    /// 1-based (line, column in characters) of a byte offset.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.input.len());
        let line = self.line(offset);
        let start = self.starts[line - 1];
        let column = self.input.get(start..offset).map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

/// One namespace binding in scope: prefix (`None` = default namespace) and URI (`""` unbinds
/// the default namespace).
type Binding = (Option<String>, String);

/// Parser state: the open elements and the namespace bindings each declared.
struct Builder<'a> {
    lines: LineIndex<'a>,
    open: Vec<Element<'a>>,
    scopes: Vec<Vec<Binding>>,
    prolog: Vec<Node<'a>>,
    root: Option<Element<'a>>,
    epilog: Vec<Node<'a>>,
}

impl<'a> Builder<'a> {
    fn malformed(&self, offset: usize, message: impl Into<String>) -> DomainXmlError {
        let (line, column) = self.lines.locate(offset);
        DomainXmlError::Malformed {
            line,
            column,
            message: message.into(),
        }
    }

    /// The namespace a prefix resolves to, looking through the scopes (innermost first) and
    /// the bindings of the element being opened.
    fn lookup(&self, own: &[Binding], prefix: Option<&str>) -> Option<String> {
        if prefix == Some("xml") {
            return Some(XML_NAMESPACE.to_owned());
        }
        own.iter()
            .rev()
            .chain(self.scopes.iter().rev().flat_map(|s| s.iter().rev()))
            .find(|(p, _)| p.as_deref() == prefix)
            .map(|(_, uri)| uri.clone())
    }

    /// Validates a start tag (names, attributes, references, namespaces) and makes an element.
    fn element(
        &self,
        start: BytesStart<'a>,
        offset: usize,
    ) -> Result<(Element<'a>, Vec<Binding>), DomainXmlError> {
        let line = self.lines.line(offset);
        let qname = start.name().0.to_owned();
        if !is_qname(&qname) {
            return Err(self.malformed(offset, format!("<{qname}> is not a valid element name")));
        }
        let mut bindings: Vec<Binding> = Vec::new();
        let mut prefixed_attrs: Vec<String> = Vec::new();
        for attr in start.attributes() {
            let attr =
                attr.map_err(|e| self.malformed(offset, format!("bad attribute in <{qname}>: {e}")))?;
            let key = attr.key.0;
            let value = self.attribute_value(&attr, &qname, offset)?;
            if key == "xmlns" {
                bindings.push((None, value.into_owned()));
            } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                bindings.push(self.prefix_binding(&qname, key, prefix, value.into_owned(), offset)?);
            } else if key.contains(':') {
                prefixed_attrs.push(key.to_owned());
            }
        }
        // Prefixes are checked once every attribute is read: a declaration may follow its use.
        self.check_attribute_prefixes(&bindings, &prefixed_attrs, &qname, offset)?;
        let ns = self.element_namespace(&bindings, &qname, offset)?;
        let element = Element {
            start,
            ns,
            line,
            children: Vec::new(),
        };
        Ok((element, bindings))
    }

    /// An attribute's normalized value, once its name, raw text, references and characters
    /// pass XML's rules; namespace declarations are checked like any other attribute.
    fn attribute_value<'v>(
        &self,
        attr: &Attribute<'v>,
        qname: &str,
        offset: usize,
    ) -> Result<Cow<'v, str>, DomainXmlError> {
        let key = attr.key.0;
        if !is_qname(key) {
            return Err(self.malformed(
                offset,
                format!("{key:?} is not a valid attribute name (in <{qname}>)"),
            ));
        }
        if attr.value.contains('<') {
            return Err(self.malformed(
                offset,
                format!("attribute {key} of <{qname}> contains a raw '<'; write &lt;"),
            ));
        }
        let value = normalized_value(attr).map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => {
                DomainXmlError::UndefinedEntity {
                    line: self.lines.line(offset),
                    name,
                }
            }
            other => self.malformed(offset, format!("attribute {key} of <{qname}>: {other}")),
        })?;
        if let Some(bad) = value.chars().find(|&c| !is_xml_char(c)) {
            return Err(self.malformed(
                offset,
                format!(
                    "attribute {key} of <{qname}> contains character U+{:04X}, which XML does not allow",
                    u32::from(bad)
                ),
            ));
        }
        Ok(value)
    }

    /// The binding an `xmlns:prefix` attribute declares, refused when it touches the reserved
    /// `xml`/`xmlns` prefixes or namespaces, or tries to unbind a prefix.
    fn prefix_binding(
        &self,
        qname: &str,
        key: &str,
        prefix: &str,
        uri: String,
        offset: usize,
    ) -> Result<Binding, DomainXmlError> {
        if prefix == "xmlns"
            || (prefix == "xml") != (uri == XML_NAMESPACE)
            || uri == "http://www.w3.org/2000/xmlns/"
        {
            return Err(self.malformed(
                offset,
                format!("<{qname}> binds the reserved prefix or namespace of {key}={uri:?}"),
            ));
        }
        if uri.is_empty() {
            return Err(self.malformed(
                offset,
                format!("<{qname}>: {key}=\"\" is not allowed (a prefix cannot be unbound)"),
            ));
        }
        Ok((Some(prefix.to_owned()), uri))
    }

    /// Refuses prefixed attributes whose prefix is bound neither by the element itself nor by
    /// an ancestor.
    fn check_attribute_prefixes(
        &self,
        bindings: &[Binding],
        prefixed_attrs: &[String],
        qname: &str,
        offset: usize,
    ) -> Result<(), DomainXmlError> {
        for key in prefixed_attrs {
            let prefix = key.split_once(':').map(|(p, _)| p);
            if self.lookup(bindings, prefix).is_none() {
                return Err(self.malformed(
                    offset,
                    format!(
                        "attribute {key} of <{qname}> uses the namespace prefix {} which is not declared",
                        prefix.unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The namespace the element's name resolves to; an empty default namespace (`xmlns=""`)
    /// means none, an undeclared prefix is an error.
    fn element_namespace(
        &self,
        bindings: &[Binding],
        qname: &str,
        offset: usize,
    ) -> Result<Option<String>, DomainXmlError> {
        let prefix = qname.split_once(':').map(|(p, _)| p);
        match self.lookup(bindings, prefix) {
            Some(uri) if uri.is_empty() => Ok(None),
            Some(uri) => Ok(Some(uri)),
            None if prefix.is_none() => Ok(None),
            None => Err(self.malformed(
                offset,
                format!(
                    "<{qname}> uses the namespace prefix {} which is not declared",
                    prefix.unwrap_or_default()
                ),
            )),
        }
    }

    /// Checks the first element of the document.
    fn check_root(&self, root: &Element<'_>) -> Result<(), DomainXmlError> {
        if root.is_plain("domain") {
            return Ok(());
        }
        let found = match &root.ns {
            Some(ns) => format!("{} (in namespace {ns})", root.qname()),
            None => root.qname().to_owned(),
        };
        Err(DomainXmlError::NotADomain {
            line: root.line,
            found,
        })
    }

    /// Opens an element (a start tag, or an empty-element tag when `empty`).
    fn open(&mut self, start: BytesStart<'a>, offset: usize, empty: bool) -> Result<(), DomainXmlError> {
        let line = self.lines.line(offset);
        if self.open.is_empty() && self.root.is_some() {
            return Err(DomainXmlError::MultipleRoots {
                line,
                found: start.name().0.to_owned(),
            });
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(DomainXmlError::TooDeep {
                line,
                limit: MAX_DEPTH,
            });
        }
        let (element, bindings) = self.element(start, offset)?;
        if self.open.is_empty() && self.root.is_none() {
            self.check_root(&element)?;
        }
        if empty {
            self.attach(element);
        } else {
            self.open.push(element);
            self.scopes.push(bindings);
        }
        Ok(())
    }

    /// Closes the innermost open element.
    fn close(&mut self, name: &str, offset: usize) -> Result<(), DomainXmlError> {
        match self.open.pop() {
            Some(element) if element.qname() == name => {
                self.scopes.pop();
                self.attach(element);
                Ok(())
            }
            Some(element) => Err(self.malformed(
                offset,
                format!(
                    "</{name}> does not close <{}> opened on line {}",
                    element.qname(),
                    element.line
                ),
            )),
            None => Err(self.malformed(offset, format!("</{name}> closes no open element"))),
        }
    }

    /// Puts a finished element into its parent, or makes it the root.
    fn attach(&mut self, element: Element<'a>) {
        match self.open.last_mut() {
            Some(parent) => parent.children.push(Node::Element(element)),
            None => self.root = Some(element),
        }
    }

    /// Adds character data (text, CDATA, reference) to the open element; outside the root
    /// only whitespace is allowed, and it is dropped.
    fn character_data(&mut self, node: Node<'a>, blank: bool, offset: usize) -> Result<(), DomainXmlError> {
        match self.open.last_mut() {
            Some(parent) => {
                parent.children.push(node);
                Ok(())
            }
            None if blank => Ok(()),
            None => Err(DomainXmlError::TextOutsideRoot {
                line: self.lines.line(offset),
            }),
        }
    }

    /// Adds a comment or processing instruction where it appears.
    fn markup(&mut self, node: Node<'a>) {
        match self.open.last_mut() {
            Some(parent) => parent.children.push(node),
            None if self.root.is_none() => self.prolog.push(node),
            None => self.epilog.push(node),
        }
    }

    /// A builder with nothing parsed yet.
    fn new(input: &'a str) -> Self {
        Builder {
            lines: LineIndex::new(input),
            open: Vec::new(),
            scopes: Vec::new(),
            prolog: Vec::new(),
            root: None,
            epilog: Vec::new(),
        }
    }

    /// XML forbids some characters (most control characters) anywhere in a document; one pass
    /// over the whole input covers text, attributes and markup alike.
    fn check_characters(&self, input: &str) -> Result<(), DomainXmlError> {
        match input.char_indices().find(|&(_, c)| !is_xml_char(c)) {
            Some((offset, c)) => Err(self.malformed(
                offset,
                format!("character U+{:04X} is not allowed in XML", u32::from(c)),
            )),
            None => Ok(()),
        }
    }

    /// Keeps the XML declaration if it opens the document, declares a valid version and an
    /// encoding that is UTF-8 (the only one the input, a Rust string, can be in).
    fn declaration(
        &mut self,
        decl: BytesDecl<'a>,
        offset: usize,
        at_start: bool,
    ) -> Result<(), DomainXmlError> {
        if !at_start || offset != 0 {
            return Err(self.malformed(
                offset,
                "an XML declaration (<?xml ...?>) may only appear at the very beginning",
            ));
        }
        if let Err(e) = decl.xml_version() {
            return Err(self.malformed(offset, format!("bad XML declaration: {e}")));
        }
        match decl.encoding() {
            Some(Ok(encoding))
                if !encoding.eq_ignore_ascii_case("utf-8") && !encoding.eq_ignore_ascii_case("utf8") =>
            {
                return Err(DomainXmlError::UnsupportedEncoding {
                    line: self.lines.line(offset),
                    encoding: encoding.into_owned(),
                });
            }
            Some(Err(e)) => {
                return Err(self.malformed(offset, format!("bad XML declaration: {e}")));
            }
            Some(Ok(_)) | None => {}
        }
        self.prolog.push(Node::Decl(decl));
        Ok(())
    }

    /// Adds text, refusing the CDATA end marker that XML forbids in plain text.
    fn text(&mut self, text: BytesText<'a>, offset: usize) -> Result<(), DomainXmlError> {
        if text.contains("]]>") {
            return Err(self.malformed(offset, "the sequence ]]> is not allowed in text"));
        }
        let blank = is_xml_whitespace(&text);
        self.character_data(Node::Text(text), blank, offset)
    }

    /// Adds a reference if it is a valid character reference or a predefined entity; there is
    /// no DTD, so any other entity is undefined.
    fn reference(&mut self, reference: BytesRef<'a>, offset: usize) -> Result<(), DomainXmlError> {
        if reference.is_char_ref() {
            match reference.resolve_char_ref() {
                Ok(Some(c)) if is_xml_char(c) => {}
                _ => {
                    return Err(self.malformed(
                        offset,
                        format!("&{}; is not a valid character reference", &*reference),
                    ));
                }
            }
        } else if predefined_entity(&reference).is_none() {
            return Err(DomainXmlError::UndefinedEntity {
                line: self.lines.line(offset),
                name: reference.to_string(),
            });
        }
        self.character_data(Node::Ref(reference), false, offset)
    }

    /// Adds a processing instruction; one targeting `xml` would be a misplaced declaration.
    fn processing_instruction(&mut self, pi: BytesPI<'a>, offset: usize) -> Result<(), DomainXmlError> {
        if pi.target().eq_ignore_ascii_case("xml") {
            return Err(self.malformed(
                offset,
                "an XML declaration (<?xml ...?>) may only appear at the very beginning",
            ));
        }
        self.markup(Node::Pi(pi));
        Ok(())
    }

    /// The document, once the input is exhausted: every element closed and a root found.
    fn finish(self, end: usize) -> Result<Document<'a>, DomainXmlError> {
        if let Some(unclosed) = self.open.last() {
            return Err(self.malformed(
                end,
                format!(
                    "<{}> opened on line {} is never closed",
                    unclosed.qname(),
                    unclosed.line
                ),
            ));
        }
        let root = self.root.ok_or(DomainXmlError::NoRoot)?;
        Ok(Document {
            prolog: self.prolog,
            root,
            epilog: self.epilog,
        })
    }
}

/// A reader as strict as XML: it checks end tags and comments and refuses stray `&`, and it
/// keeps whitespace and empty-element tags as written so the tree can be written back.
fn strict_reader(input: &str) -> Reader<&[u8]> {
    let mut reader = Reader::from_str(input);
    let config = reader.config_mut();
    config.trim_text(false);
    config.expand_empty_elements = false;
    config.check_end_names = true;
    config.check_comments = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    reader
}

/// Parses a base XML (or a generated one) into a tree, rejecting anything that is not a
/// well-formed document with a single `<domain>` root, a DOCTYPE, and undefined entities.
pub(crate) fn parse(input: &str) -> Result<Document<'_>, DomainXmlError> {
    let input = input.strip_prefix('\u{FEFF}').unwrap_or(input);
    let mut b = Builder::new(input);
    b.check_characters(input)?;

    let mut reader = strict_reader(input);
    let mut first = true;
    loop {
        let offset = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => {
                let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                return Err(b.malformed(at, e.to_string()));
            }
        };
        let was_first = std::mem::replace(&mut first, false);
        match event {
            Event::Eof => break,
            Event::Decl(decl) => b.declaration(decl, offset, was_first)?,
            Event::DocType(_) => {
                return Err(DomainXmlError::Doctype {
                    line: b.lines.line(offset),
                });
            }
            Event::Start(start) => b.open(start, offset, false)?,
            Event::Empty(start) => b.open(start, offset, true)?,
            Event::End(end) => b.close(end.name().0, offset)?,
            Event::Text(text) => b.text(text, offset)?,
            Event::CData(cdata) => b.character_data(Node::CData(cdata), false, offset)?,
            Event::GeneralRef(reference) => b.reference(reference, offset)?,
            Event::Comment(comment) => b.markup(Node::Comment(comment)),
            Event::PI(pi) => b.processing_instruction(pi, offset)?,
        }
    }
    b.finish(input.len())
}

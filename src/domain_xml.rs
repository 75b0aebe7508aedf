//! Base XML -> domain XML.

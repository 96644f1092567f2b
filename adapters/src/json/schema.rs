//! Schema-aware hints for the JSON form: which elements repeat, which values are numbers or
//! booleans. (Placeholder: the XSD walker fills it.)

use super::emit::Kind;

/// Type hints for one schema set.
#[derive(Debug, Default, Clone)]
pub struct Hints {}

/// Where in the schema an element sits (index of its declaration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope(u32);

impl Hints {
    pub(crate) fn root_scope(&self, _qname: &str) -> Scope {
        Scope(0)
    }
    pub(crate) fn child(&self, _scope: Option<Scope>, _qname: &str) -> Option<Scope> {
        None
    }
    pub(crate) fn text_kind(&self, _scope: Option<Scope>) -> Option<Kind> {
        None
    }
    pub(crate) fn attr_kind(&self, _scope: Option<Scope>, _qname: &str) -> Option<Kind> {
        None
    }
    pub(crate) fn is_repeated(&self, _scope: Option<Scope>) -> bool {
        false
    }
}

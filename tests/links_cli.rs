//! `ferry link add|list|del` end to end.

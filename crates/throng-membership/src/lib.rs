//! Placeholder: cluster membership (being written).

//! Cairn's checkpoint storage over object_store: layout, atomic publish, discovery, retention and GC

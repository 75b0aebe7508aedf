//! Safe layer over librados/librbd: the only module with unsafe FFI for Ceph.

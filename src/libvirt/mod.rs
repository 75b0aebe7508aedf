//! Safe layer over libvirt.

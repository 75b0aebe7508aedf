//! Repairs what a process killed inside librbd's rename of a finished temporary disk
//! (`tmp_<final>_<uid key>` to `<final>`) left behind.
//!
//! librbd writes the pointer `rbd_id.<final>`, then moves the directory entry, then removes
//! `rbd_id.<tmp>` (see `ceph::image_id`). Killed after the first step, the disk is complete
//! under its temporary name but its final name is taken by a pointer no directory entry
//! backs: removing the temporary image as a leftover (what the next run did) threw the disk
//! away and left the VM on `NameConflict` for ever. Killed after the second step, a stray
//! `rbd_id.<tmp>` names the final image: removing the "temporary image" by that name would
//! reach the VM's disk.
//!
//! The decision is pure ([`decide`]); `rbd::prepare` gathers the pointers and acts.

use crate::ceph::ImageName;

use super::plan;

/// What the pool says of one disk of the VM: its final name and the ids the pointers of its
/// final and temporary names hold (`None`: no such object).
#[derive(Clone, Debug)]
pub(crate) struct DiskPointers {
    pub final_name: String,
    pub final_pointer: Option<String>,
    pub temp_pointer: Option<String>,
}

/// One repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Repair {
    /// The rename stopped before the directory changed: the temporary image is the finished
    /// disk. Drop the pointer of the final name and rename again.
    FinishRename { tmp: String, final_name: String },
    /// A pointer no directory entry of that name backs, to this VM's own image or to no listed
    /// image: drop the pointer alone.
    DropPointer { name: String },
}

/// The repairs for the VM's disks, given the directory's listing and the VM's UID key.
///
/// A pointer to an image listed under a name that is not this VM's (someone else's data) is
/// left alone: the ownership check then names the conflict.
pub(crate) fn decide(listing: &[ImageName], disks: &[DiskPointers], uid_key: &str) -> Vec<Repair> {
    let listed_as = |id: &str| listing.iter().find(|i| i.id == id).map(|i| i.name.as_str());
    let is_listed = |name: &str| listing.iter().any(|i| i.name == name);
    let mut repairs = Vec::new();
    for disk in disks {
        let tmp = plan::temp_image_name(&disk.final_name, uid_key);
        if let Some(id) = &disk.final_pointer
            && !is_listed(&disk.final_name)
        {
            match listed_as(id) {
                Some(name) if name == tmp => repairs.push(Repair::FinishRename {
                    tmp: tmp.clone(),
                    final_name: disk.final_name.clone(),
                }),
                Some(_) => {}
                None => repairs.push(Repair::DropPointer {
                    name: disk.final_name.clone(),
                }),
            }
        }
        if disk.temp_pointer.is_some() && !is_listed(&tmp) {
            repairs.push(Repair::DropPointer { name: tmp });
        }
    }
    repairs
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abc123";

    fn listed(entries: &[(&str, &str)]) -> Vec<ImageName> {
        entries
            .iter()
            .map(|(name, id)| ImageName {
                name: (*name).into(),
                id: (*id).into(),
            })
            .collect()
    }

    fn disk(final_pointer: Option<&str>, temp_pointer: Option<&str>) -> DiskPointers {
        DiskPointers {
            final_name: "system_vm1".into(),
            final_pointer: final_pointer.map(Into::into),
            temp_pointer: temp_pointer.map(Into::into),
        }
    }

    #[test]
    fn interrupted_renames_are_finished_or_their_stray_pointers_dropped() {
        let tmp = "tmp_system_vm1_abc123";
        let finish = Repair::FinishRename {
            tmp: tmp.into(),
            final_name: "system_vm1".into(),
        };
        let drop = |name: &str| Repair::DropPointer { name: name.into() };
        let cases: Vec<(&str, Vec<ImageName>, DiskPointers, Vec<Repair>)> = vec![
            ("nothing yet", listed(&[]), disk(None, None), vec![]),
            ("building", listed(&[(tmp, "i1")]), disk(None, Some("i1")), vec![]),
            (
                "renamed",
                listed(&[("system_vm1", "i1")]),
                disk(Some("i1"), None),
                vec![],
            ),
            (
                "killed after the new pointer",
                listed(&[(tmp, "i1")]),
                disk(Some("i1"), Some("i1")),
                vec![finish],
            ),
            (
                "killed after the directory moved",
                listed(&[("system_vm1", "i1")]),
                disk(Some("i1"), Some("i1")),
                vec![drop(tmp)],
            ),
            (
                "the temporary image removed by an older run",
                listed(&[]),
                disk(Some("i1"), None),
                vec![drop("system_vm1")],
            ),
            (
                "a pointer to someone else's image is left alone",
                listed(&[("data_other_0", "i9")]),
                disk(Some("i9"), None),
                vec![],
            ),
            (
                "another object's temporary image is someone else's",
                listed(&[("tmp_system_vm1_zzz", "i1")]),
                disk(Some("i1"), None),
                vec![],
            ),
        ];
        for (what, listing, pointers, want) in cases {
            assert_eq!(decide(&listing, &[pointers], KEY), want, "{what}");
        }
    }
}

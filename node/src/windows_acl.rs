//! The data dir's ACL on Windows, the counterpart of Unix's 0700: a protected DACL
//! (nothing inherited from the parent folder, such as `C:\ProgramData`'s read
//! access for Users) with full control for SYSTEM, Administrators and the owner of
//! each file or folder, inherited by everything in it.
//!
//! The node's only `unsafe`: calls into `advapi32` through `windows-sys` (no
//! maintained safe crate sets a protected DACL). Each call's safety is stated where
//! it is made.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;

use windows_sys::Win32::Foundation::{LocalFree, ERROR_SUCCESS};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
    SetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    GetSecurityDescriptorDacl, ACL, DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR,
};

/// The data dir's DACL in SDDL: protected (`P`); allow (`A`) full access (`FA`),
/// inherited by files and folders (`OICI`), to SYSTEM (`SY`), Administrators (`BA`)
/// and the object's owner (`OW`: the node's user for what it creates).
pub const OWNER_ONLY: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;OW)";

/// The ACEs of [`OWNER_ONLY`], in any order.
const ACES: [&str; 3] = ["(A;OICI;FA;;;SY)", "(A;OICI;FA;;;BA)", "(A;OICI;FA;;;OW)"];

fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str().encode_wide().chain(Some(0)).collect()
}

/// A buffer `LocalAlloc`ed by Windows for us, freed on drop.
struct Local(*mut c_void);

impl Drop for Local {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from a Windows function documented to
            // allocate it with `LocalAlloc`, and is freed once, here.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// The DACL of `path` in SDDL.
pub fn dacl(path: &Path) -> io::Result<String> {
    let name = wide(path);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; the
    // out-pointers we do not want are null, which the function allows; `sd` receives
    // a `LocalAlloc`ed descriptor, owned by `Local` below.
    let status = unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let sd = Local(sd);
    let mut text: *mut u16 = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `sd.0` is the valid descriptor read above; `text` receives a
    // `LocalAlloc`ed NUL-terminated string of `len` characters, owned by `Local`.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let text = Local(text.cast());
    // SAFETY: Windows wrote `len` UTF-16 units (with the NUL, which is trimmed) at
    // `text`, valid until `text` is dropped at the end of this function.
    let units = unsafe { std::slice::from_raw_parts(text.0 as *const u16, len as usize) };
    Ok(String::from_utf16_lossy(units)
        .trim_end_matches('\0')
        .to_string())
}

/// Whether `sddl` is [`OWNER_ONLY`] (as Windows writes it back: flags such as
/// `AI` may be added, the ACEs may come in another order).
pub fn is_owner_only(sddl: &str) -> bool {
    let Some(rest) = sddl.strip_prefix("D:") else {
        return false;
    };
    let (flags, aces) = rest.split_at(rest.find('(').unwrap_or(rest.len()));
    if !flags.contains('P') {
        return false;
    }
    let mut found: Vec<&str> = aces
        .split_inclusive(')')
        .filter(|a| !a.is_empty())
        .collect();
    found.sort_unstable();
    let mut wanted = ACES.to_vec();
    wanted.sort_unstable();
    found == wanted
}

/// Give `dir` (and, by inheritance, everything in it) the [`OWNER_ONLY`] ACL,
/// unless it has it. Returns the DACL it had when it was changed.
pub fn restrict(dir: &Path) -> io::Result<Option<String>> {
    let before = dacl(dir)?;
    if is_owner_only(&before) {
        return Ok(None);
    }
    let sddl: Vec<u16> = OWNER_ONLY.encode_utf16().chain(Some(0)).collect();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated and outlives the call; `sd` receives a
    // `LocalAlloc`ed descriptor, owned by `Local` below; the size is optional.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let sd = Local(sd);
    let mut present = 0;
    let mut defaulted = 0;
    let mut acl: *mut ACL = std::ptr::null_mut();
    // SAFETY: `sd.0` is the valid descriptor made above; `acl` points into it and
    // is used only while `sd` lives.
    let ok = unsafe { GetSecurityDescriptorDacl(sd.0, &mut present, &mut acl, &mut defaulted) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let name = wide(dir);
    // SAFETY: `name` is NUL-terminated and outlives the call; `acl` is valid (see
    // above); owner, group and SACL are not set (null). Windows propagates the
    // inheritable ACEs to what is already in the folder.
    let status = unsafe {
        SetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            acl,
            std::ptr::null(),
        )
    };
    if status != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    Ok(Some(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_only_acl_is_recognised_as_windows_writes_it_back() {
        assert!(is_owner_only(OWNER_ONLY));
        assert!(is_owner_only(
            "D:PAI(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)(A;OICI;FA;;;OW)"
        ));
        // Not protected: the parent's ACEs come back.
        assert!(!is_owner_only(
            "D:(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;OW)"
        ));
        // One more reader.
        assert!(!is_owner_only(
            "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;OW)(A;OICI;FR;;;BU)"
        ));
        assert!(!is_owner_only("D:P(A;OICI;FA;;;SY)"));
        assert!(!is_owner_only(""));
    }

    #[test]
    fn a_data_dir_gets_the_owner_only_acl_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "x").unwrap();
        let before = dacl(&dir).unwrap();
        assert!(!is_owner_only(&before), "{before}");
        assert_eq!(restrict(&dir).unwrap(), Some(before));
        if strom_actors::runtime::job::under_wine() {
            // Wine 8 keeps no ACLs on files (it maps a DACL to Unix mode bits where
            // it can, and reports a DACL made from them): only the calls are tested.
            eprintln!("under Wine: the data dir's ACL is set but cannot be read back");
            return;
        }
        let now = dacl(&dir).unwrap();
        assert!(is_owner_only(&now), "{now}");
        // A file in it inherits the three ACEs, and only them.
        let file = dacl(&dir.join("admin.token")).unwrap();
        for ace in ["SY)", "BA)", "OW)"] {
            assert!(file.contains(ace), "{file}");
        }
        assert_eq!(file.matches('(').count(), 3, "{file}");
        // Already so: nothing to change.
        assert_eq!(restrict(&dir).unwrap(), None);
    }
}

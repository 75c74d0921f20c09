//! The data dir's owner and ACL on Windows, the counterpart of Unix's 0700: owned by
//! the node's user, with a protected DACL (nothing inherited from the parent folder,
//! such as `C:\ProgramData`'s read access for Users) that gives full control to
//! SYSTEM, Administrators and the node's user only — for a service running as
//! LocalSystem, SYSTEM and Administrators alone. Set on the whole tree, so files
//! and folders in it lose any entries of their own.
//!
//! The node's only `unsafe`: calls into `advapi32` through `windows-sys` (no
//! maintained safe crate sets a protected DACL and an owner on a tree). Each call's
//! safety is stated where it is made.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;

use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_CALL_NOT_IMPLEMENTED, ERROR_SUCCESS, HANDLE,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
    ConvertStringSecurityDescriptorToSecurityDescriptorW, GetNamedSecurityInfoW,
    ProgressInvokeNever, SetNamedSecurityInfoW, TreeResetNamedSecurityInfoW, SDDL_REVISION_1,
    SE_FILE_OBJECT,
};
use windows_sys::Win32::Security::{
    GetSecurityDescriptorDacl, GetSecurityDescriptorOwner, GetTokenInformation, TokenUser, ACL,
    DACL_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// LocalSystem's SID.
const SYSTEM: &str = "S-1-5-18";

/// Well-known SIDs as Windows writes them in SDDL.
const ALIASES: [(&str, &str); 2] = [("SY", SYSTEM), ("BA", "S-1-5-32-544")];

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

/// A NUL-terminated UTF-16 string Windows allocated, as a `String`.
fn local_string(text: *mut u16) -> String {
    if text.is_null() {
        return String::new();
    }
    let text = Local(text.cast());
    let start = text.0 as *const u16;
    let mut len = 0;
    // SAFETY: Windows returned a NUL-terminated string at `start`; it is read up to
    // its NUL, while `text` (freed at the end of this function) keeps it alive.
    unsafe {
        while *start.add(len) != 0 {
            len += 1;
        }
        String::from_utf16_lossy(std::slice::from_raw_parts(start, len))
    }
}

/// The SID of this process's user, e.g. `S-1-5-18` for LocalSystem.
pub fn current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of this process needs no closing; `token` receives
    // a handle we close below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u64; 64]; // 512 bytes, 8-aligned: a TOKEN_USER and its SID
    let mut needed = 0u32;
    // SAFETY: `token` is valid; `buf` is writable for its length in bytes, aligned
    // for TOKEN_USER; `needed` receives the size used.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr().cast(),
            (buf.len() * 8) as u32,
            &mut needed,
        )
    };
    let error = io::Error::last_os_error();
    // SAFETY: `token` was opened above and is closed once, here.
    unsafe { CloseHandle(token) };
    if ok == 0 {
        return Err(error);
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into
    // the same buffer, which lives until the end of this function.
    let sid: PSID = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is valid (above); `text` receives a `LocalAlloc`ed string,
    // freed by `local_string`.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(local_string(text))
}

/// The owner and DACL wanted for a data dir of the node's user `user` (a SID).
pub fn owner_only(user: &str) -> String {
    let user_ace = if user == SYSTEM {
        String::new()
    } else {
        format!("(A;OICI;FA;;;{user})")
    };
    format!("O:{user}D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA){user_ace}")
}

/// The owner and DACL of `path` in SDDL (`O:…D:…`).
pub fn security(path: &Path) -> io::Result<String> {
    let name = wide(path);
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; the
    // out-pointers we do not want are null, which the function allows; `sd` receives
    // a `LocalAlloc`ed descriptor, owned by `Local` below.
    let status = unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
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
    // SAFETY: `sd.0` is the valid descriptor read above; `text` receives a
    // `LocalAlloc`ed NUL-terminated string, freed by `local_string`; the length is
    // optional.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut text,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(local_string(text))
}

/// A SID as a string, well-known aliases (`SY`, `BA`) expanded.
fn expand(sid: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == sid)
        .map_or(sid, |(_, full)| full)
}

/// The ACEs of an SDDL DACL part, each with its SID expanded, sorted.
fn aces(part: &str) -> Vec<String> {
    let mut found: Vec<String> = part
        .split_inclusive(')')
        .filter(|a| a.starts_with('('))
        .map(|ace| {
            let inner = &ace[1..ace.len() - 1];
            match inner.rsplit_once(';') {
                Some((head, sid)) => format!("({head};{})", expand(sid)),
                None => ace.to_string(),
            }
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether `sddl` (as [`security`] reads it) is [`owner_only`] for `user`, as
/// Windows writes it back: flags such as `AI` may be added, the ACEs may come in
/// another order, well-known SIDs as aliases.
pub fn is_owner_only(sddl: &str, user: &str) -> bool {
    let parse = |sddl: &str| -> Option<(String, String, Vec<String>)> {
        let rest = sddl.strip_prefix("O:")?;
        let (owner, dacl) = rest.split_once("D:")?;
        let (flags, list) = dacl.split_at(dacl.find('(').unwrap_or(dacl.len()));
        Some((expand(owner).to_string(), flags.to_string(), aces(list)))
    };
    let (Some((owner, flags, found)), Some((_, _, wanted))) =
        (parse(sddl), parse(&owner_only(user)))
    else {
        return false;
    };
    owner == user && flags.contains('P') && found == wanted
}

/// Give `dir` and everything in it the node's user as owner and the owner-only ACL
/// ([`owner_only`]), unless `dir` has them. Returns what it had and what it has
/// when it changed them.
pub fn restrict(dir: &Path) -> io::Result<Option<(String, String)>> {
    let user = current_user_sid()?;
    let before = security(dir)?;
    if is_owner_only(&before, &user) {
        return Ok(None);
    }
    let wanted = owner_only(&user);
    let sddl: Vec<u16> = wanted.encode_utf16().chain(Some(0)).collect();
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
    let (mut present, mut defaulted) = (0, 0);
    let mut acl: *mut ACL = std::ptr::null_mut();
    let mut owner: PSID = std::ptr::null_mut();
    // SAFETY: `sd.0` is the valid descriptor made above; `acl` and `owner` point
    // into it and are used only while `sd` lives.
    let ok = unsafe {
        GetSecurityDescriptorDacl(sd.0, &mut present, &mut acl, &mut defaulted) != 0
            && GetSecurityDescriptorOwner(sd.0, &mut owner, &mut defaulted) != 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    // A null DACL would give everyone full access: never set one.
    if present == 0 || acl.is_null() || owner.is_null() {
        return Err(io::Error::other(format!(
            "the descriptor {wanted} has no DACL or owner"
        )));
    }
    let name = wide(dir);
    let info = OWNER_SECURITY_INFORMATION
        | DACL_SECURITY_INFORMATION
        | PROTECTED_DACL_SECURITY_INFORMATION;
    // SAFETY: `name` is NUL-terminated and outlives the call; `owner` and `acl` are
    // valid (see above); group and SACL are not set (null); no progress callback.
    // Every file and folder under `dir` gets the owner and the inherited ACEs, and
    // loses entries of its own (`KeepExplicit` false).
    let mut status = unsafe {
        TreeResetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            info,
            owner,
            std::ptr::null_mut(),
            acl,
            std::ptr::null(),
            0,
            None,
            ProgressInvokeNever,
            std::ptr::null(),
        )
    };
    if status == ERROR_CALL_NOT_IMPLEMENTED {
        // Wine: the folder alone (what is in it inherits).
        // SAFETY: as above.
        status = unsafe {
            SetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                info,
                owner,
                std::ptr::null_mut(),
                acl,
                std::ptr::null(),
            )
        };
    }
    if status != ERROR_SUCCESS {
        let e = io::Error::from_raw_os_error(status as i32);
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot make it this node's user's ({user}) alone: {e}; if another user owns it, give it to this one (or to Administrators) or choose another data dir"
            ),
        ));
    }
    Ok(Some((before, wanted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "S-1-5-21-1-2-3-1001";

    #[test]
    fn the_owner_only_acl_is_recognised_as_windows_writes_it_back() {
        assert!(is_owner_only(&owner_only(USER), USER));
        assert!(is_owner_only(
            &format!("O:{USER}D:PAI(A;OICI;FA;;;{USER})(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)"),
            USER
        ));
        // LocalSystem: SYSTEM and Administrators alone, as aliases or not.
        assert_eq!(
            owner_only(SYSTEM),
            "O:S-1-5-18D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
        );
        assert!(is_owner_only(
            "O:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;S-1-5-32-544)",
            SYSTEM
        ));
        // Another owner (who could change the DACL back).
        assert!(!is_owner_only(
            &format!(
                "O:S-1-5-21-9-9-9-1002D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{USER})"
            ),
            USER
        ));
        // Not protected: the parent's ACEs come back.
        assert!(!is_owner_only(
            &format!("O:{USER}D:(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{USER})"),
            USER
        ));
        // One more reader.
        assert!(!is_owner_only(
            &format!(
                "O:{USER}D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;{USER})(A;OICI;FR;;;BU)"
            ),
            USER
        ));
        assert!(!is_owner_only("", USER));
    }

    #[test]
    fn a_data_dir_becomes_its_users_alone_once() {
        let user = current_user_sid().unwrap();
        assert!(user.starts_with("S-1-"), "{user}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "x").unwrap();
        let before = security(&dir).unwrap();
        assert!(!is_owner_only(&before, &user), "{before}");
        assert_eq!(restrict(&dir).unwrap(), Some((before, owner_only(&user))));
        if strom_actors::runtime::job::under_wine() {
            // Wine 8 keeps no ACLs on files (it maps a DACL to Unix mode bits where
            // it can, and reports a DACL made from them): only the calls are tested.
            eprintln!("under Wine: the data dir's ACL is set but cannot be read back");
            return;
        }
        let now = security(&dir).unwrap();
        assert!(is_owner_only(&now, &user), "{now}");
        // A file in it has the owner and the inherited ACEs (`ID`), and only them.
        let file = security(&dir.join("admin.token")).unwrap();
        let (owner, dacl) = file.strip_prefix("O:").unwrap().split_once("D:").unwrap();
        assert_eq!(expand(owner), user, "{file}");
        let found = aces(dacl);
        let wanted = aces(owner_only(&user).split_once("D:").unwrap().1);
        assert_eq!(found.len(), wanted.len(), "{file}");
        assert!(found.iter().all(|a| a.contains("ID")), "{file}");
        // Already so: nothing to change.
        assert_eq!(restrict(&dir).unwrap(), None);
    }
}

//! What a container is asked to be, and what the engine's answers mean: pure
//! functions of the instance, the app's runtime settings and the engine's OS,
//! tested without an engine.
//!
//! Linux containers: published on `127.0.0.1` at an engine-chosen port, a
//! read-only root, a tmpfs `/tmp`, `no-new-privileges`, every capability dropped,
//! `docker-init` as PID 1, a non-root user, memory (no extra swap), CPU and pids
//! limits. Windows containers: the container's own address, the isolation mode,
//! none of what Windows lacks.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding,
};
use strom_proto::runtime_settings::RuntimeSettings;

use super::{
    DockerRuntime, EngineOs, Isolation, CONTAINER_PORT, DEFAULT_USER, LABEL_APP, LABEL_CLUSTER,
    LABEL_INSTANCE, LABEL_NODE, LABEL_VERSION,
};
use crate::runtime::{ExitInfo, InstanceSpec};

impl DockerRuntime {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn body(
        &self,
        spec: &InstanceSpec,
        settings: &RuntimeSettings,
        image: &str,
        image_user: Option<&str>,
        source: &Path,
        os: EngineOs,
        network: Option<&str>,
    ) -> ContainerCreateBody {
        let root = os.wwwroot();
        let exe = &spec.handler.default_executable_path;
        let program = if Path::new(exe).is_relative() && spec.app_root.join(exe).is_file() {
            in_wwwroot(exe, os)
        } else {
            exe.clone()
        };
        let args = spec.expanded_arguments();
        let working_dir = match &spec.handler.working_directory {
            Some(w) if !w.is_empty() => in_wwwroot(w, os),
            _ => root.to_string(),
        };
        let mut env: Vec<String> = spec
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(
            spec.host_env(CONTAINER_PORT, root)
                .iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        let labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), self.config.cluster.clone()),
            (LABEL_NODE.to_string(), self.config.node.to_string()),
            (LABEL_APP.to_string(), spec.app.to_string()),
            (LABEL_VERSION.to_string(), spec.version.to_string()),
            (LABEL_INSTANCE.to_string(), spec.instance_id.clone()),
        ]);
        let tcp = format!("{CONTAINER_PORT}/tcp");
        let mut host = HostConfig {
            mounts: Some(vec![Mount {
                target: Some(root.to_string()),
                source: Some(source.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]),
            // Bounded logs: they are read as they come, kept only for `docker logs`.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            nano_cpus: settings.nano_cpus,
            network_mode: network.map(str::to_string),
            memory: settings
                .memory_mb
                .filter(|m| *m > 0)
                .map(|mb| (mb * 1024 * 1024) as i64),
            ..Default::default()
        };
        let user = match os {
            EngineOs::Linux => harden_linux(&mut host, settings, image_user, &tcp),
            EngineOs::Windows => windows_host(&mut host, settings, self.config.isolation),
        };
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![program]),
            cmd: Some(args),
            env: Some(env),
            working_dir: Some(working_dir),
            user,
            labels: Some(labels),
            exposed_ports: Some(vec![tcp]),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

/// A path relative to the app root, inside the container.
fn in_wwwroot(rel: &str, os: EngineOs) -> String {
    let sep = os.separator();
    let mut rel = rel;
    // `./x`, `/x` and `.\x` are all `x` under the app root (as on the host).
    loop {
        if let Some(r) = rel.strip_prefix("./").or_else(|| rel.strip_prefix(".\\")) {
            rel = r;
        } else if let Some(r) = rel.strip_prefix(['/', '\\']) {
            rel = r;
        } else {
            break;
        }
    }
    if rel == "." {
        rel = "";
    }
    let rel: String = rel
        .chars()
        .map(|c| if c == '/' || c == '\\' { sep } else { c })
        .collect();
    if rel.is_empty() {
        os.wwwroot().to_string()
    } else {
        format!("{}{sep}{rel}", os.wwwroot())
    }
}

/// Linux containers: published on 127.0.0.1, hardened; returns the user to run as.
fn harden_linux(
    host: &mut HostConfig,
    settings: &RuntimeSettings,
    image_user: Option<&str>,
    tcp: &str,
) -> Option<String> {
    host.port_bindings = Some(HashMap::from([(
        tcp.to_string(),
        Some(vec![PortBinding {
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            host_port: Some(String::new()),
        }]),
    )]));
    if let Some(bytes) = host.memory {
        // No swap beyond the memory limit: over it is out of memory.
        host.memory_swap = Some(bytes);
    }
    host.pids_limit = settings.pids;
    host.readonly_rootfs = Some(true);
    host.tmpfs = Some(HashMap::from([(
        "/tmp".to_string(),
        "rw,nosuid,nodev,size=64m".to_string(),
    )]));
    host.security_opt = Some(vec!["no-new-privileges".into()]);
    host.cap_drop = Some(vec!["ALL".into()]);
    // PID 1 that forwards SIGTERM and reaps children (the engine's docker-init).
    host.init = Some(true);
    let image_user = image_user.map(str::trim).filter(|u| !u.is_empty());
    let root = |u: &str| {
        let name = u.split(':').next().unwrap_or(u);
        name == "0" || name == "root"
    };
    match (&settings.user, image_user) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(u)) if !root(u) => None,
        _ => Some(DEFAULT_USER.to_string()),
    }
}

/// Windows containers: no published port (Windows NAT cannot publish on one host
/// address; the worker reaches the container's own address), the isolation mode, and
/// none of what Windows lacks (read-only root, tmpfs, capabilities, pids, init). The
/// image's user (e.g. `ContainerUser` on nanoserver) applies unless the app names one.
fn windows_host(
    host: &mut HostConfig,
    settings: &RuntimeSettings,
    isolation: Isolation,
) -> Option<String> {
    use bollard::models::HostConfigIsolationEnum as I;
    host.isolation = Some(match isolation {
        Isolation::Default => I::DEFAULT,
        Isolation::Process => I::PROCESS,
        Isolation::HyperV => I::HYPERV,
    });
    settings.user.clone()
}

/// How a container's exit code reads. Linux: 128+N is signal N (what the init
/// process reports), and an out-of-memory kill is SIGKILL with the engine's OOM flag.
/// Windows: codes are unsigned (NTSTATUS values above `i32::MAX` shown in hex).
pub(super) fn exit_from(code: i64, oom: bool, os: EngineOs) -> ExitInfo {
    match os {
        EngineOs::Linux if oom && code == 137 => ExitInfo::OutOfMemory,
        EngineOs::Linux if (129..=159).contains(&code) => ExitInfo::Signal((code - 128) as i32),
        EngineOs::Windows if code > i64::from(i32::MAX) || code < 0 => {
            ExitInfo::Other(format!("exited with code 0x{:08X}", code as u32))
        }
        _ => ExitInfo::Code(code as i32),
    }
}

/// Where the worker reaches the handler: the published port on 127.0.0.1 (Linux),
/// or the container's own address (Windows NAT). `None`: not there (yet).
pub(super) fn endpoint_of(
    inspect: &bollard::models::ContainerInspectResponse,
    os: EngineOs,
) -> Option<SocketAddr> {
    let net = inspect.network_settings.as_ref()?;
    match os {
        EngineOs::Linux => net
            .ports
            .as_ref()?
            .get(&format!("{CONTAINER_PORT}/tcp"))
            .cloned()
            .flatten()?
            .into_iter()
            .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        EngineOs::Windows => net
            .networks
            .as_ref()?
            .values()
            .find_map(|n| n.ip_address.as_deref().and_then(|ip| ip.parse().ok()))
            .map(|ip: std::net::IpAddr| SocketAddr::new(ip, CONTAINER_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{DockerConfig, WWWROOT, WWWROOT_WINDOWS};
    use super::*;
    use EngineOs::{Linux, Windows};

    #[test]
    fn exit_codes_map_to_what_happened() {
        assert_eq!(exit_from(0, false, Linux), ExitInfo::Code(0));
        assert_eq!(exit_from(7, false, Linux), ExitInfo::Code(7));
        assert_eq!(exit_from(143, false, Linux), ExitInfo::Signal(15));
        assert_eq!(exit_from(137, false, Linux), ExitInfo::Signal(9));
        assert_eq!(exit_from(137, true, Linux), ExitInfo::OutOfMemory);
        // The flag alone (a child was OOM-killed, the handler exited by itself) is
        // not the handler running out of memory.
        assert_eq!(exit_from(0, true, Linux), ExitInfo::Code(0));
        assert_eq!(exit_from(143, false, Windows), ExitInfo::Code(143));
        assert_eq!(
            exit_from(0xC000_013A, false, Windows),
            ExitInfo::Other("exited with code 0xC000013A".into())
        );
    }

    #[test]
    fn paths_resolve_inside_wwwroot() {
        assert_eq!(in_wwwroot("handler", Linux), format!("{WWWROOT}/handler"));
        assert_eq!(
            in_wwwroot("./bin/handler", Linux),
            format!("{WWWROOT}/bin/handler")
        );
        assert_eq!(in_wwwroot("", Linux), WWWROOT);
        assert_eq!(in_wwwroot(".", Linux), WWWROOT);
        assert_eq!(
            in_wwwroot(".venv/bin/python", Linux),
            format!("{WWWROOT}/.venv/bin/python")
        );
        assert_eq!(in_wwwroot("/abs/x", Linux), format!("{WWWROOT}/abs/x"));
        assert_eq!(
            in_wwwroot("bin/handler.exe", Windows),
            r"C:\home\site\wwwroot\bin\handler.exe"
        );
        assert_eq!(
            in_wwwroot(r".\h.exe", Windows),
            r"C:\home\site\wwwroot\h.exe"
        );
        assert!("process".parse::<Isolation>().is_ok());
        assert!("HyperV".parse::<Isolation>().is_ok());
        assert!("vm"
            .parse::<Isolation>()
            .unwrap_err()
            .contains("process, hyperv"));
        assert_eq!(EngineOs::from_info(Some("windows")), Windows);
        assert_eq!(EngineOs::from_info(Some("linux")), Linux);
    }

    fn spec(dir: &Path) -> InstanceSpec {
        std::fs::write(dir.join("handler"), b"").unwrap();
        InstanceSpec {
            app: strom_proto::ids::AppName::parse("shop").unwrap(),
            version: strom_proto::ids::VersionId::of_bytes(b"v"),
            instance_id: "shop-1".into(),
            app_root: dir.to_path_buf(),
            handler: strom_proto::manifest::CustomHandler {
                default_executable_path: "handler".into(),
                arguments: vec!["--mode=%MODE%".into()],
                working_directory: Some("sub".into()),
                enable_forwarding_http_request: false,
            },
            settings: [("MODE".to_string(), "x".to_string())].into(),
        }
    }

    #[test]
    fn linux_containers_are_hardened_and_run_as_non_root() {
        let rt = DockerRuntime::new(DockerConfig {
            cluster: "c1".into(),
            node: 3,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let settings = RuntimeSettings {
            memory_mb: Some(64),
            nano_cpus: Some(500_000_000),
            pids: Some(32),
            ..Default::default()
        };
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            None,
            dir.path(),
            Linux,
            Some("strom-3-c1"),
        );
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(b.entrypoint, Some(vec![format!("{WWWROOT}/handler")]));
        assert_eq!(b.cmd, Some(vec!["--mode=x".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/home/site/wwwroot/sub"));
        assert_eq!(b.user.as_deref(), Some(DEFAULT_USER));
        let env = b.env.as_ref().unwrap();
        assert!(env.contains(&"FUNCTIONS_CUSTOMHANDLER_PORT=8080".to_string()));
        assert!(env.contains(&format!("FUNCTIONS_APP_ROOT_PATH={WWWROOT}")));
        assert!(env.contains(&"MODE=x".to_string()));
        assert_eq!(b.labels.as_ref().unwrap()["strom.node"], "3");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.pids_limit, Some(32));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.init, Some(true));
        assert!(h.tmpfs.as_ref().unwrap().contains_key("/tmp"));
        assert_eq!(h.isolation, None);
        assert_eq!(h.network_mode.as_deref(), Some("strom-3-c1"));
        assert_eq!(rt.network_name(), "strom-3-c1");
        let binding = &h.port_bindings.as_ref().unwrap()["8080/tcp"]
            .as_ref()
            .unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        let m = &h.mounts.as_ref().unwrap()[0];
        assert_eq!(m.read_only, Some(true));
        assert_eq!(m.target.as_deref(), Some(WWWROOT));

        // The image's own non-root user is kept; a root one is not; the app wins.
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            Some("app:app"),
            dir.path(),
            Linux,
            None,
        );
        assert_eq!(b.user, None);
        let b = rt.body(
            &spec,
            &settings,
            "img:1",
            Some("root"),
            dir.path(),
            Linux,
            None,
        );
        assert_eq!(b.user.as_deref(), Some(DEFAULT_USER));
        let mine = RuntimeSettings {
            user: Some("0".into()),
            ..Default::default()
        };
        let b = rt.body(&spec, &mine, "img:1", Some("app"), dir.path(), Linux, None);
        assert_eq!(b.user.as_deref(), Some("0"));
        assert_eq!(
            b.host_config.unwrap().memory,
            None,
            "no memory limit unless set"
        );
    }

    #[test]
    fn windows_containers_get_their_paths_isolation_and_no_linux_options() {
        let rt = DockerRuntime::new(DockerConfig {
            cluster: "c1".into(),
            node: 3,
            isolation: Isolation::HyperV,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let settings = RuntimeSettings {
            memory_mb: Some(256),
            nano_cpus: Some(1_000_000_000),
            pids: Some(32),
            ..Default::default()
        };
        let b = rt.body(
            &spec,
            &settings,
            "win:1",
            Some("ContainerUser"),
            dir.path(),
            Windows,
            None,
        );
        let h = b.host_config.as_ref().unwrap();
        assert_eq!(
            b.entrypoint,
            Some(vec![r"C:\home\site\wwwroot\handler".to_string()])
        );
        assert_eq!(b.working_dir.as_deref(), Some(r"C:\home\site\wwwroot\sub"));
        assert!(b
            .env
            .as_ref()
            .unwrap()
            .contains(&r"FUNCTIONS_APP_ROOT_PATH=C:\home\site\wwwroot".to_string()));
        assert_eq!(b.user, None, "the image's user");
        assert_eq!(
            h.mounts.as_ref().unwrap()[0].target.as_deref(),
            Some(WWWROOT_WINDOWS)
        );
        assert_eq!(
            h.isolation,
            Some(bollard::models::HostConfigIsolationEnum::HYPERV)
        );
        assert_eq!(h.memory, Some(256 << 20));
        assert_eq!(h.nano_cpus, Some(1_000_000_000));
        // Windows NAT cannot publish on 127.0.0.1; Windows has none of these.
        assert_eq!(h.port_bindings, None);
        assert_eq!(h.memory_swap, None);
        assert_eq!(h.pids_limit, None);
        assert_eq!(h.readonly_rootfs, None);
        assert_eq!(h.tmpfs, None);
        assert_eq!(h.cap_drop, None);
        assert_eq!(h.security_opt, None);
        assert_eq!(h.init, None);
        assert_eq!(h.network_mode, None, "the engine's nat network");
    }
}

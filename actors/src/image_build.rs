//! `strom image build`: a local image of an app folder, without a registry —
//! `FROM <base>` (`scratch` for a statically linked handler), the app as a deploy
//! would ship it, and a non-root user. It talks to the local engine only; it is
//! not part of the worker's runtime, which runs the images it makes.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;

use crate::runtime::docker::engine::{describe, is_not_found, unreachable};
use crate::runtime::docker::{open_up, EngineOs, WWWROOT};

/// Options of [`build_image`].
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The app folder (host.json at its root); copied to the wwwroot path.
    pub app_dir: PathBuf,
    /// The base image (`scratch` for a statically linked handler).
    pub base: String,
    pub tag: String,
    /// Let the engine pull a missing base image.
    pub pull: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageBuildError {
    /// The folder, tag or base is wrong; nothing was built.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

/// Build a local image for an app: `FROM <base>`, the app folder (as packed by
/// `strom app deploy`: `.funcignore` honored, `local.settings.json` left out) copied
/// to the wwwroot path, and on `scratch` a `nobody` user; it runs as 65534:65534.
/// The same image runs under `STROM_RUNTIME=docker` (which mounts the deployed
/// version over its copy) and under a bare `docker run`. Returns the image id.
pub async fn build_image(docker: &Docker, opts: &ImageBuild) -> Result<String, ImageBuildError> {
    use ImageBuildError::*;
    strom_proto::runtime_settings::parse_image(&opts.tag)
        .map_err(|e| Input(format!("--tag: {e}")))?;
    if opts.base != "scratch" {
        strom_proto::runtime_settings::parse_image(&opts.base)
            .map_err(|e| Input(format!("--base: {e}")))?;
    }
    let zip = strom_proto::manifest::pack_dir(&opts.app_dir)
        .map_err(|e| Input(format!("{}: {e}", opts.app_dir.display())))?;
    // Check it is an app before building (host.json, function folders).
    let limits = strom_proto::manifest::ZipLimits::default();
    let pkg = strom_proto::manifest::AppPackage::from_zip_bytes(&zip, &limits)
        .map_err(|e| Input(format!("{}: {e}", opts.app_dir.display())))?;
    strom_proto::manifest::validate_app_for(
        &pkg,
        &Default::default(),
        strom_proto::manifest::HandlerCheck::PackageOnly,
    )
    .map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Input(format!("{}: {}", opts.app_dir.display(), lines.join("; ")))
    })?;
    let os = match docker.info().await {
        Ok(info) => EngineOs::from_info(info.os_type.as_deref()),
        Err(e) => return Err(Unreachable(unreachable(describe(&e)).to_string())),
    };
    if opts.base == "scratch" && os == EngineOs::Windows {
        return Err(Input(
            "--base: Windows images cannot start from scratch; name a Windows base image \
             matching the host (e.g. mcr.microsoft.com/windows/nanoserver:ltsc2022)"
                .into(),
        ));
    }
    if opts.base != "scratch" {
        match docker.inspect_image(&opts.base).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) && !opts.pull => {
                return Err(Input(format!(
                    "base image `{}` is not on this Docker engine (load it with `docker load`, \
                     or pass --pull to let the engine pull it)",
                    opts.base
                )))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Unreachable(unreachable(describe(&e)).to_string())),
        }
    }
    let context =
        context_tar(&zip, &opts.base, os).map_err(|e| Failed(format!("build context: {e}")))?;
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&opts.tag)
        .rm(true)
        .forcerm(true)
        .labels(&HashMap::from([(
            "strom.app-image".to_string(),
            "1".to_string(),
        )]));
    if opts.pull {
        options = options.pull("true");
    }
    let mut stream = docker.build_image(
        options.build(),
        None,
        Some(bollard::body_full(context.into())),
    );
    let mut id = None;
    let mut transcript = String::new();
    while let Some(step) = stream.next().await {
        let info =
            step.map_err(|e| Failed(format!("building `{}`: {}", opts.tag, describe(&e))))?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(Failed(format!(
                "building `{}`: {detail}\n{transcript}",
                opts.tag
            )));
        }
        if let Some(s) = info.stream {
            transcript.push_str(&s);
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    match id {
        Some(id) => Ok(id),
        None => docker
            .inspect_image(&opts.tag)
            .await
            .ok()
            .and_then(|i| i.id)
            .ok_or_else(|| {
                Failed(format!(
                    "building `{}` produced no image:\n{transcript}",
                    opts.tag
                ))
            }),
    }
}

/// Where `strom image build` puts the app in a Windows image: not the wwwroot path,
/// since Windows mounts only onto a missing or empty folder.
pub const IMAGE_APP_WINDOWS: &str = "C:/strom/app";

/// The build context: a Dockerfile and the app's files (from the package zip, so
/// exactly what a deploy would ship, modes kept).
fn context_tar(zip: &[u8], base: &str, os: EngineOs) -> std::io::Result<Vec<u8>> {
    let staging = tempfile::tempdir()?;
    let app = staging.path().join("app");
    strom_proto::manifest::extract_to(zip, &app, &strom_proto::manifest::ZipLimits::default())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    open_up(&app)?;
    std::fs::write(staging.path().join("Dockerfile"), dockerfile(base, os))?;
    if base == "scratch" {
        std::fs::write(
            staging.path().join("passwd"),
            "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n",
        )?;
        std::fs::write(
            staging.path().join("group"),
            "root:x:0:\nnogroup:x:65534:\n",
        )?;
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", staging.path())?;
    tar.into_inner()
}

fn dockerfile(base: &str, os: EngineOs) -> String {
    let mut d = format!("FROM {base}\n");
    match os {
        EngineOs::Linux => {
            if base == "scratch" {
                d.push_str("COPY passwd /etc/passwd\nCOPY group /etc/group\n");
            }
            d.push_str(&format!(
                "COPY app {WWWROOT}\nWORKDIR {WWWROOT}\nUSER 65534:65534\n"
            ));
        }
        EngineOs::Windows => {
            d.push_str(&format!(
                "COPY app {IMAGE_APP_WINDOWS}\nWORKDIR {IMAGE_APP_WINDOWS}\n"
            ));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use EngineOs::{Linux, Windows};

    #[test]
    fn image_dockerfiles_fit_the_engine() {
        let linux = dockerfile("scratch", Linux);
        assert!(
            linux.starts_with("FROM scratch\nCOPY passwd /etc/passwd"),
            "{linux}"
        );
        assert!(
            linux.contains("COPY app /home/site/wwwroot\n") && linux.contains("USER 65534:65534")
        );
        let windows = dockerfile("mcr.microsoft.com/windows/nanoserver:ltsc2022", Windows);
        assert!(
            !windows.contains("wwwroot"),
            "Windows mounts only onto an empty folder: {windows}"
        );
        assert!(
            windows.contains("COPY app C:/strom/app") && !windows.contains("USER"),
            "{windows}"
        );
    }
}

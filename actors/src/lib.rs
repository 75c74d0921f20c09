//! `strom-actors`: the worker role as a library.
//!
//! It will hold the ractor supervisor tree (`NodeSupervisor` → `AppSupervisor` →
//! `InstanceActor`), the instance runtimes (process by default, Docker via bollard)
//! and the routing snapshot the gateway reads. It depends only on `strom-proto`;
//! it meets the control plane in `strom-node`. See `docs/architecture.md` §Worker.

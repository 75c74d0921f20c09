//! The cluster scheduler's placement decision: a pure function from the replicated
//! [`ClusterState`] (plus what the leader saw in worker heartbeats) to the
//! [`PlacementChange`]s that bring placements to the desired state.
//!
//! The leader calls [`plan`] on every reconcile round and commits a non-empty result
//! as one `Command::Place`. `plan` reads no clock, does no I/O and iterates only
//! ordered maps, so the same inputs always give the same changes; nothing here is
//! durable or kept between rounds (a new leader simply plans again). Planning twice
//! without anything changing in between gives no changes the second time.
//!
//! # Rules
//!
//! - **Requirements.** An app reserves `STROM_MEMORY_MB` MiB per instance (default 0:
//!   not counted) and may only run on workers carrying every `key=value` label of
//!   `STROM_WORKER_LABELS` (comma-separated; empty or absent: any worker). An app whose
//!   settings do not parse is left exactly as placed.
//! - **Who takes what.** A worker *can take* an app when it is up, `Active` and has
//!   the app's labels. The default desired count is `min(2, n)` where `n` counts the
//!   up, label-matching workers that are `Active` *or `Cordoned`*: cordoning a worker
//!   must not shrink the apps it runs (cordon means "keep what you have"), so
//!   cordoned workers count here even though they take nothing new.
//! - **Down or unregistered workers** lose their placements at once; the instances
//!   are placed elsewhere in the same round, and a worker coming back finds nothing
//!   to run, so no surplus appears.
//! - **Cordoned workers** keep what they have and take nothing new.
//! - **Leaving workers** (up and `Draining`, or no longer carrying the app's labels)
//!   keep their placements only until the app has at least `desired` Ready instances
//!   (per [`LiveView`]) on the workers it stays on; then they go to 0
//!   (make-before-break). Their instances do not count toward `desired`, so the
//!   replacements are placed elsewhere while they still serve.
//! - **Adding** happens one instance at a time on a worker that can take the app and
//!   has room (instances of all apps + 1 ≤ its capacity; and, when both the worker's
//!   memory and the app's reservation are non-zero, reserved memory + the app's ≤ its
//!   memory): fewest instances of this app there first (spread), then fewest
//!   instances in total, then the lowest node id. When nothing fits the app stays
//!   under-placed and the next round tries again.
//! - **Removing** surplus (scale down) goes one instance at a time: from cordoned
//!   workers first, then from the worker with the most instances of the app, then
//!   the most in total, then the highest node id.
//!
//! A round works in two passes over the apps in name order: first every removal,
//! then every addition, with worker load tracked as it goes. Capacity freed by one
//! app's scale-down is therefore usable by any app in the same round, which is what
//! makes a second plan over the applied result empty.
//!
//! Placements of apps that no longer exist are not this module's concern (the state
//! machine drops them with the app); they still count toward a worker's load.

use std::collections::{BTreeMap, HashMap};

use strom_proto::command::{PlacementChange, WorkerSchedule};
use strom_proto::ids::{AppName, NodeId};

use crate::cluster_state::{AppState, ClusterState};

/// The app setting reserving memory (MiB) per instance.
pub const MEMORY_SETTING: &str = strom_proto::runtime_settings::MEMORY_MB;
/// The app setting listing the `key=value` labels a worker must carry.
pub const LABELS_SETTING: &str = "STROM_WORKER_LABELS";
/// `true`: a batch app with no instance between its timer runs.
pub const SCALE_TO_ZERO_SETTING: &str = "STROM_SCALE_TO_ZERO";
/// How long a scale-to-zero app's instance stays after its last run (`hh:mm:ss`).
pub const IDLE_STOP_SETTING: &str = "STROM_IDLE_STOP";
/// [`IDLE_STOP_SETTING`]'s default: 5 minutes.
pub const DEFAULT_IDLE_STOP_MS: u64 = 300_000;
/// The most instances an app with RabbitMQ triggers scales to on queue depth.
pub const MAX_SCALE_SETTING: &str = "STROM_MAX_SCALE";
/// Messages (waiting and being handled) per instance when scaling on queue depth.
pub const TARGET_QUEUE_LENGTH_SETTING: &str = "STROM_TARGET_QUEUE_LENGTH";
/// How long queue demand must stay lower before the scale falls (`hh:mm:ss`).
pub const SCALE_DOWN_COOLDOWN_SETTING: &str = "STROM_SCALE_DOWN_COOLDOWN";
/// The largest `STROM_MAX_SCALE` taken.
pub const MAX_SCALE_LIMIT: u32 = 1000;

/// What the leader knows from worker heartbeats (not replicated): Ready instances
/// of each app's *active* version on each worker.
#[derive(Debug, Default, Clone)]
pub struct LiveView {
    pub ready: HashMap<(NodeId, AppName), u32>,
    /// The leader's clock (Unix ms), for scale-to-zero apps' idle time.
    pub now_ms: i64,
    /// The scale the leader decided for each app that scales on queue depth
    /// (`queue_scale`); such an app runs at least this many instances.
    pub queue_scale: HashMap<AppName, u32>,
}

/// What an app asks of the workers it runs on, parsed from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// MiB reserved per instance; 0 = not counted.
    pub memory_mb: u64,
    /// Labels a worker must all carry; empty = any worker.
    pub labels: BTreeMap<String, String>,
    /// A batch app: instances only while its timers run, and for `idle_stop_ms`
    /// after.
    pub scale_to_zero: bool,
    pub idle_stop_ms: u64,
    /// `STROM_MAX_SCALE`: with RabbitMQ triggers, the app scales on queue depth
    /// up to this many instances.
    pub max_scale: Option<u32>,
    /// `STROM_TARGET_QUEUE_LENGTH`: messages per instance.
    pub target_queue_length: u64,
    /// `STROM_SCALE_DOWN_COOLDOWN`: how long queue demand stays lower before the
    /// scale falls.
    pub scale_down_cooldown_ms: u64,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            memory_mb: 0,
            labels: BTreeMap::new(),
            scale_to_zero: false,
            idle_stop_ms: DEFAULT_IDLE_STOP_MS,
            max_scale: None,
            target_queue_length: crate::queue_scale::DEFAULT_TARGET_QUEUE_LENGTH,
            scale_down_cooldown_ms: crate::queue_scale::DEFAULT_SCALE_DOWN_COOLDOWN.as_millis()
                as u64,
        }
    }
}

/// Desired instances of an app: its scale, or by default `min(2, eligible_workers)`.
pub fn desired(app: &AppState, eligible_workers: usize) -> u32 {
    app.scale.unwrap_or(eligible_workers.min(2) as u32)
}

/// Whether a scale-to-zero app needs an instance at `now_ms`: one of its timers
/// has a run recorded (going on, or waiting for a retry), or its last run ended
/// less than `idle_stop_ms` ago.
pub fn batch_active(state: &ClusterState, app: &AppName, idle_stop_ms: u64, now_ms: i64) -> bool {
    state
        .timers
        .iter()
        .filter(|(t, _)| &t.app == app)
        .any(|(_, r)| {
            r.running.is_some()
                || r.last_outcome
                    .as_ref()
                    .is_some_and(|o| o.finished_at_ms.saturating_add(idle_stop_ms as i64) > now_ms)
        })
}

/// Desired instances of an app with requirements `req` at `now_ms`: a
/// scale-to-zero app's scale (at least 1) while [`batch_active`], else 0; any
/// other app's [`desired`]. An app that scales on queue depth runs at least the
/// scale the leader decided for it (`queue_scale`).
fn desired_of(
    state: &ClusterState,
    app: &AppState,
    req: &Requirements,
    eligible: usize,
    now_ms: i64,
    queue_scale: Option<u32>,
) -> u32 {
    let base = if !req.scale_to_zero {
        desired(app, eligible)
    } else if batch_active(state, &app.name, req.idle_stop_ms, now_ms) {
        app.scale.unwrap_or(1).max(1)
    } else {
        0
    };
    // The queue's decision is at least the usual scale of an app that does not
    // scale to zero; a scale-to-zero app also runs while its timers do.
    queue_scale.map_or(base, |q| base.max(q))
}

/// Desired instances of `app` in `state` at `now_ms`, counted as [`plan`] counts
/// them (for status displays); 0 when its settings do not parse.
pub fn desired_in(state: &ClusterState, app: &AppState, now_ms: i64) -> u32 {
    let Ok(req) = app_requirements(&app.settings) else {
        return app.scale.unwrap_or(0);
    };
    let eligible = eligible_workers(state, &req);
    // The leader's queue decision is not replicated: shown as placed.
    let queue = crate::queue_scale::limits_of(app, &req, eligible).map(|_| {
        state
            .placements
            .get(&app.name)
            .map_or(0, |p| p.values().sum())
    });
    desired_of(state, app, &req, eligible, now_ms, queue)
}

/// Workers an app with requirements `req` may be placed on now: Up, not
/// draining, with its labels.
pub fn eligible_workers(state: &ClusterState, req: &Requirements) -> usize {
    state
        .workers
        .values()
        .filter(|w| w.up && w.schedule != WorkerSchedule::Draining)
        .filter(|w| {
            req.labels
                .iter()
                .all(|(k, v)| w.info.labels.get(k) == Some(v))
        })
        .count()
}

/// App settings the scheduler reads, parsed; errors name the setting and value.
pub fn app_requirements(settings: &BTreeMap<String, String>) -> Result<Requirements, String> {
    let mut req = Requirements::default();
    if let Some(raw) = settings.get(SCALE_TO_ZERO_SETTING) {
        req.scale_to_zero = match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => {
                return Err(format!(
                    "{SCALE_TO_ZERO_SETTING} `{raw}` is not true or false"
                ))
            }
        };
    }
    if let Some(raw) = settings.get(IDLE_STOP_SETTING) {
        let value = raw.trim();
        if !value.is_empty() {
            req.idle_stop_ms = strom_proto::manifest::timespan::parse_timespan_ms(value)
                .ok_or_else(|| format!("{IDLE_STOP_SETTING} `{raw}` is not hh:mm:ss"))?;
        }
    }
    if let Some(raw) = settings.get(MAX_SCALE_SETTING) {
        let value = raw.trim();
        if !value.is_empty() {
            req.max_scale = Some(
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_SCALE_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "{MAX_SCALE_SETTING} `{raw}` is not a whole number from 1 to {MAX_SCALE_LIMIT}"
                        )
                    })?,
            );
        }
    }
    if let Some(raw) = settings.get(TARGET_QUEUE_LENGTH_SETTING) {
        let value = raw.trim();
        if !value.is_empty() {
            req.target_queue_length = value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    format!(
                        "{TARGET_QUEUE_LENGTH_SETTING} `{raw}` is not a whole number of messages (1 or more)"
                    )
                })?;
        }
    }
    if let Some(raw) = settings.get(SCALE_DOWN_COOLDOWN_SETTING) {
        let value = raw.trim();
        if !value.is_empty() {
            req.scale_down_cooldown_ms = strom_proto::manifest::timespan::parse_timespan_ms(value)
                .ok_or_else(|| format!("{SCALE_DOWN_COOLDOWN_SETTING} `{raw}` is not hh:mm:ss"))?;
        }
    }
    if let Some(raw) = settings.get(MEMORY_SETTING) {
        let value = raw.trim();
        if !value.is_empty() {
            req.memory_mb = value.parse().map_err(|_| {
                format!("{MEMORY_SETTING} `{raw}` is not a whole number of MiB (0 or more)")
            })?;
        }
    }
    if let Some(raw) = settings.get(LABELS_SETTING) {
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| format!("{LABELS_SETTING} `{raw}`: `{pair}` {why}");
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(bad("has an empty key"));
            }
            if let Some(earlier) = req.labels.insert(key.to_string(), value.to_string()) {
                if earlier != value {
                    return Err(bad(&format!("contradicts `{key}={earlier}`")));
                }
            }
        }
    }
    Ok(req)
}

/// The changes that bring placements to the desired state; empty when nothing to do.
pub fn plan(state: &ClusterState, live: &LiveView) -> Vec<PlacementChange> {
    let mut workers = Workers::new(state);
    let mut label_sets = LabelSets::default();

    // Pass 1, in app order: drop what must go and decide what stays.
    let mut apps: Vec<AppPlan<'_>> = Vec::with_capacity(state.apps.len());
    for (name, app) in &state.apps {
        let Ok(req) = app_requirements(&app.settings) else {
            continue;
        };
        let set = label_sets.index_of(&req.labels, &workers);
        let desired = desired_of(
            state,
            app,
            &req,
            label_sets.sets[set].eligible,
            live.now_ms,
            live.queue_scale.get(name).copied(),
        );
        let mut app_plan = AppPlan {
            name,
            memory_mb: req.memory_mb,
            set,
            desired,
            entries: Vec::new(),
            gone: Vec::new(),
        };
        app_plan.release(state, live, &mut workers, &label_sets.sets[set]);
        apps.push(app_plan);
    }

    // Pass 2, in app order: add what is missing where it fits.
    let mut scratch = Scratch::new(workers.len());
    for app_plan in &mut apps {
        app_plan.add(&mut workers, &label_sets.sets[app_plan.set], &mut scratch);
    }

    let mut changes = Vec::new();
    for app_plan in &apps {
        app_plan.changes(&workers, &mut changes);
    }
    changes
}

/// The registered workers in node-id order, as dense arrays the inner loop reads.
struct Workers<'a> {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
    up: Vec<bool>,
    schedule: Vec<WorkerSchedule>,
    labels: Vec<&'a BTreeMap<String, String>>,
    cap_instances: Vec<u32>,
    cap_memory_mb: Vec<u64>,
    /// Instances of all apps placed (as planned so far).
    load: Vec<u32>,
    /// MiB reserved by those instances (apps whose settings parse).
    memory_mb: Vec<u64>,
}

impl<'a> Workers<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let n = state.workers.len();
        let mut w = Workers {
            ids: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
            up: Vec::with_capacity(n),
            schedule: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            cap_instances: Vec::with_capacity(n),
            cap_memory_mb: Vec::with_capacity(n),
            load: vec![0; n],
            memory_mb: vec![0; n],
        };
        for (i, (id, ws)) in state.workers.iter().enumerate() {
            w.ids.push(*id);
            w.index.insert(*id, i);
            w.up.push(ws.up);
            w.schedule.push(ws.schedule);
            w.labels.push(&ws.info.labels);
            w.cap_instances.push(ws.info.capacity.instances);
            w.cap_memory_mb.push(ws.info.capacity.memory_mb);
        }
        for (name, per_node) in &state.placements {
            let memory = state
                .apps
                .get(name)
                .and_then(|a| app_requirements(&a.settings).ok())
                .map_or(0, |r| r.memory_mb);
            for (node, count) in per_node {
                if let Some(&i) = w.index.get(node) {
                    w.load[i] = w.load[i].saturating_add(*count);
                    w.memory_mb[i] = w.memory_mb[i].saturating_add(memory * u64::from(*count));
                }
            }
        }
        w
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Account for `count` more (positive) or fewer (negative) instances on worker `i`.
    fn adjust(&mut self, i: usize, count: i64, memory_mb: u64) {
        let load = i64::from(self.load[i]) + count;
        self.load[i] = u32::try_from(load.max(0)).unwrap_or(u32::MAX);
        let memory = memory_mb.saturating_mul(count.unsigned_abs());
        self.memory_mb[i] = if count >= 0 {
            self.memory_mb[i].saturating_add(memory)
        } else {
            self.memory_mb[i].saturating_sub(memory)
        };
    }
}

/// The workers one distinct label requirement allows, computed once per round.
struct LabelSet {
    /// Carries every required label (any schedule, up or not).
    matches: Vec<bool>,
    /// Up, matching and `Active`: where new instances may go, in node-id order.
    candidates: Vec<usize>,
    /// Up, matching and not draining: what the default desired count is based on.
    eligible: usize,
}

#[derive(Default)]
struct LabelSets {
    by_labels: HashMap<BTreeMap<String, String>, usize>,
    sets: Vec<LabelSet>,
}

impl LabelSets {
    fn index_of(&mut self, labels: &BTreeMap<String, String>, workers: &Workers<'_>) -> usize {
        if let Some(&i) = self.by_labels.get(labels) {
            return i;
        }
        let matches: Vec<bool> = workers
            .labels
            .iter()
            .map(|have| labels.iter().all(|(k, v)| have.get(k) == Some(v)))
            .collect();
        let usable = |i: usize| matches[i] && workers.up[i];
        let candidates = (0..workers.len())
            .filter(|&i| usable(i) && workers.schedule[i] == WorkerSchedule::Active)
            .collect();
        let eligible = (0..workers.len())
            .filter(|&i| usable(i) && workers.schedule[i] != WorkerSchedule::Draining)
            .count();
        let i = self.sets.len();
        self.sets.push(LabelSet {
            matches,
            candidates,
            eligible,
        });
        self.by_labels.insert(labels.clone(), i);
        i
    }
}

/// One app's placements through the round.
struct AppPlan<'a> {
    name: &'a AppName,
    memory_mb: u64,
    set: usize,
    desired: u32,
    /// Placements on registered workers: worker index, count before, count after.
    entries: Vec<Entry>,
    /// Placements on workers no longer registered (all go to 0).
    gone: Vec<NodeId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Up, not draining, matching: counts toward desired.
    Kept,
    /// Up but draining or no longer matching: stays until replaced.
    Leaving,
    /// Down, or added this round.
    Other,
}

struct Entry {
    worker: usize,
    before: u32,
    after: u32,
    role: Role,
}

impl AppPlan<'_> {
    /// Pass 1: drop placements on down/unregistered workers, remove surplus, and
    /// release leaving workers once the app is Ready enough elsewhere.
    fn release(
        &mut self,
        state: &ClusterState,
        live: &LiveView,
        workers: &mut Workers<'_>,
        set: &LabelSet,
    ) {
        let Some(placed) = state.placements.get(self.name) else {
            return;
        };
        for (node, &count) in placed {
            let Some(&i) = workers.index.get(node) else {
                self.gone.push(*node);
                continue;
            };
            let (role, after) = if !workers.up[i] {
                workers.adjust(i, -i64::from(count), self.memory_mb);
                (Role::Other, 0)
            } else if workers.schedule[i] == WorkerSchedule::Draining || !set.matches[i] {
                (Role::Leaving, count)
            } else {
                (Role::Kept, count)
            };
            self.entries.push(Entry {
                worker: i,
                before: count,
                after,
                role,
            });
        }

        let mut kept: u32 = self.kept();
        while kept > self.desired {
            let victim = self
                .entries
                .iter_mut()
                .filter(|e| e.role == Role::Kept && e.after > 0)
                .max_by_key(|e| {
                    (
                        workers.schedule[e.worker] == WorkerSchedule::Cordoned,
                        e.after,
                        workers.load[e.worker],
                        e.worker,
                    )
                });
            let Some(victim) = victim else { break };
            victim.after -= 1;
            workers.adjust(victim.worker, -1, self.memory_mb);
            kept -= 1;
        }

        if self.entries.iter().any(|e| e.role == Role::Leaving) {
            let ready: u64 = self
                .entries
                .iter()
                .filter(|e| e.role == Role::Kept)
                .map(|e| {
                    let key = (workers.ids[e.worker], self.name.clone());
                    u64::from(live.ready.get(&key).copied().unwrap_or(0).min(e.after))
                })
                .sum();
            if ready >= u64::from(self.desired) {
                for e in self.entries.iter_mut().filter(|e| e.role == Role::Leaving) {
                    workers.adjust(e.worker, -i64::from(e.after), self.memory_mb);
                    e.after = 0;
                }
            }
        }
    }

    fn kept(&self) -> u32 {
        self.entries
            .iter()
            .filter(|e| e.role == Role::Kept)
            .fold(0u32, |sum, e| sum.saturating_add(e.after))
    }

    /// Pass 2: add instances up to desired, one at a time, where they fit best.
    fn add(&mut self, workers: &mut Workers<'_>, set: &LabelSet, scratch: &mut Scratch) {
        let kept = self.kept();
        if kept >= self.desired {
            return;
        }
        for (pos, e) in self.entries.iter().enumerate() {
            scratch.count[e.worker] = e.after;
            scratch.entry[e.worker] = pos;
        }
        let memory_mb = self.memory_mb;
        for _ in kept..self.desired {
            let mut best: Option<(u64, usize)> = None;
            for &i in &set.candidates {
                let load = workers.load[i];
                if load >= workers.cap_instances[i] {
                    continue;
                }
                let cap_memory = workers.cap_memory_mb[i];
                if cap_memory > 0
                    && memory_mb > 0
                    && workers.memory_mb[i].saturating_add(memory_mb) > cap_memory
                {
                    continue;
                }
                let key = (u64::from(scratch.count[i]) << 32) | u64::from(load);
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, i));
                }
            }
            let Some((_, i)) = best else { break };
            workers.adjust(i, 1, memory_mb);
            scratch.count[i] += 1;
            match scratch.entry[i] {
                NO_ENTRY => {
                    scratch.entry[i] = self.entries.len();
                    self.entries.push(Entry {
                        worker: i,
                        before: 0,
                        after: 1,
                        role: Role::Other,
                    });
                }
                pos => self.entries[pos].after += 1,
            }
        }
        for e in &self.entries {
            scratch.count[e.worker] = 0;
            scratch.entry[e.worker] = NO_ENTRY;
        }
    }

    fn changes(&self, workers: &Workers<'_>, out: &mut Vec<PlacementChange>) {
        let mut mine: Vec<(NodeId, u32)> = self
            .entries
            .iter()
            .filter(|e| e.after != e.before)
            .map(|e| (workers.ids[e.worker], e.after))
            .chain(self.gone.iter().map(|n| (*n, 0)))
            .collect();
        mine.sort_unstable_by_key(|(node, _)| *node);
        out.extend(mine.into_iter().map(|(node, instances)| PlacementChange {
            app: self.name.clone(),
            node,
            instances,
        }));
    }
}

const NO_ENTRY: usize = usize::MAX;

/// Per-worker arrays reused across apps so the inner loop allocates nothing.
struct Scratch {
    /// Instances of the current app on each worker.
    count: Vec<u32>,
    /// Position of that worker in the current app's entries, or `NO_ENTRY`.
    entry: Vec<usize>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            count: vec![0; n],
            entry: vec![NO_ENTRY; n],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use strom_proto::command::{
        Command, CommandResult, DeployVersion, InitialKeys, WorkerCapacity, WorkerInfo,
    };
    use strom_proto::ids::{ClusterId, TokenHash, VersionId};
    use strom_proto::manifest::AppManifest;

    use super::*;
    use crate::cluster_state::tests::{http, manifest};

    fn app(name: &str) -> AppName {
        AppName::parse(name).unwrap()
    }

    /// Manifests are zipped and validated once per app name (each has its own route).
    fn manifest_for(name: &str) -> AppManifest {
        static CACHE: Mutex<BTreeMap<String, AppManifest>> = Mutex::new(BTreeMap::new());
        let mut cache = CACHE.lock().unwrap();
        cache
            .entry(name.to_string())
            .or_insert_with(|| manifest(name, &[("f", &http("f", r#""get""#))]))
            .clone()
    }

    fn pairs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A cluster state built only through `ClusterState::apply`, plus a live view.
    struct World {
        state: ClusterState,
        live: LiveView,
        at: i64,
    }

    impl World {
        fn new() -> Self {
            let mut w = World {
                state: ClusterState::default(),
                live: LiveView::default(),
                at: 0,
            };
            w.apply(Command::InitCluster {
                cluster_id: ClusterId::new_random(),
                admin_token_hash: TokenHash::of("a"),
                join_token_hash: TokenHash::of("j"),
                at_ms: 0,
            });
            w
        }

        fn now(&mut self) -> i64 {
            self.at += 1;
            self.at
        }

        fn apply(&mut self, command: Command) {
            let r = self.state.apply(&command);
            assert!(
                !matches!(r, CommandResult::Rejected(_)),
                "{command:?}: {r:?}"
            );
        }

        fn worker(
            &mut self,
            node: NodeId,
            instances: u32,
            memory_mb: u64,
            labels: &[(&str, &str)],
        ) {
            let at_ms = self.now();
            self.apply(Command::RegisterWorker(Box::new(WorkerInfo {
                node,
                http_addr: format!("127.0.0.1:{}", 7000 + node),
                capacity: WorkerCapacity {
                    instances,
                    memory_mb,
                },
                labels: pairs(labels),
                build: "test".into(),
                at_ms,
            })));
        }

        fn workers(&mut self, nodes: std::ops::RangeInclusive<NodeId>) {
            for node in nodes {
                self.worker(node, 100, 0, &[]);
            }
        }

        fn deploy(&mut self, name: &str, settings: &[(&str, &str)]) {
            let at_ms = self.now();
            self.apply(Command::DeployVersion(Box::new(DeployVersion {
                app: app(name),
                version: VersionId::of_bytes(name.as_bytes()),
                size_bytes: 10,
                manifest: manifest_for(name),
                at_ms,
                initial_keys: InitialKeys {
                    master: "m".into(),
                    host_default: "h".into(),
                    function_defaults: BTreeMap::new(),
                },
                settings: pairs(settings),
            })));
        }

        /// An app whose one function `work` consumes RabbitMQ queue `jobs`.
        fn deploy_queue_app(&mut self, name: &str, settings: &[(&str, &str)]) {
            let mut settings = pairs(settings);
            settings.insert("Mq".into(), "amqp://u:p@127.0.0.1:5672/".into());
            let at_ms = self.now();
            self.apply(Command::SetClusterProtocol {
                protocol: strom_proto::version::PROTOCOL,
                at_ms,
            });
            let trigger = r#"{"bindings":[{"type":"rabbitMQTrigger","direction":"in","name":"m",
                "queueName":"jobs","connectionStringSetting":"Mq"}]}"#;
            let at_ms = self.now();
            self.apply(Command::DeployVersion(Box::new(DeployVersion {
                app: app(name),
                version: VersionId::of_bytes(name.as_bytes()),
                size_bytes: 10,
                manifest: crate::cluster_state::tests::manifest_with(
                    name,
                    &[("work", trigger)],
                    &settings,
                ),
                at_ms,
                initial_keys: InitialKeys {
                    master: "m".into(),
                    host_default: "h".into(),
                    function_defaults: BTreeMap::new(),
                },
                settings,
            })));
        }

        fn settings(&mut self, name: &str, set: &[(&str, &str)]) {
            let at_ms = self.now();
            self.apply(Command::SetAppSettings {
                app: app(name),
                set: pairs(set),
                remove: vec![],
                at_ms,
            });
        }

        fn scale(&mut self, name: &str, instances: u32) {
            let at_ms = self.now();
            self.apply(Command::SetScale {
                app: app(name),
                instances,
                at_ms,
            });
        }

        fn liveness(&mut self, node: NodeId, up: bool) {
            let at_ms = self.now();
            self.apply(Command::SetWorkerLiveness { node, up, at_ms });
        }

        fn schedule(&mut self, node: NodeId, schedule: WorkerSchedule) {
            let at_ms = self.now();
            self.apply(Command::SetWorkerSchedule {
                node,
                schedule,
                at_ms,
            });
        }

        fn ready(&mut self, node: NodeId, name: &str, instances: u32) {
            self.live.ready.insert((node, app(name)), instances);
        }

        fn plan(&self) -> Vec<PlacementChange> {
            plan(&self.state, &self.live)
        }

        /// One reconcile round: plan, commit, and check a second plan has nothing to do.
        fn round(&mut self) -> Vec<(NodeId, u32)> {
            let changes = self.plan();
            let at_ms = self.now();
            self.apply(Command::Place {
                changes: changes.clone(),
                at_ms,
            });
            assert_eq!(self.plan(), vec![], "planning again right after applying");
            changes.iter().map(|c| (c.node, c.instances)).collect()
        }

        fn placed(&self, name: &str) -> Vec<(NodeId, u32)> {
            self.state
                .placements
                .get(&app(name))
                .map(|p| p.iter().map(|(n, c)| (*n, *c)).collect())
                .unwrap_or_default()
        }
    }

    /// The leader's queue scaler feeding the scheduler, as the term task does:
    /// reads every 500 ms, the scaler's scales into the live view, a round.
    #[test]
    fn a_queue_app_scales_from_zero_on_depth_and_back_after_the_cool_down() {
        use crate::queue_scale::QueueScaler;
        let mut w = World::new();
        w.workers(1..=2);
        w.deploy_queue_app(
            "orders",
            &[
                (SCALE_TO_ZERO_SETTING, "true"),
                (MAX_SCALE_SETTING, "4"),
                (TARGET_QUEUE_LENGTH_SETTING, "10"),
                (SCALE_DOWN_COOLDOWN_SETTING, "00:00:05"),
            ],
        );
        // An app without the settings is not the scaler's: its usual scale.
        w.deploy_queue_app("plain", &[]);
        let mut scaler = QueueScaler::default();
        let mut at_ms = 0;
        let total = |w: &World, name: &str| w.placed(name).iter().map(|(_, n)| n).sum::<u32>();
        let mut step =
            |w: &mut World, scaler: &mut QueueScaler, ready: Option<u64>, in_flight: u64| {
                at_ms += 500;
                let read = ready.ok_or_else(|| "connection refused to 127.0.0.1:5672".to_string());
                let reads = vec![
                    (app("orders"), "jobs".to_string(), read.clone()),
                    (app("plain"), "jobs".to_string(), read),
                ];
                scaler.observe(&w.state, reads, |_| in_flight, at_ms);
                w.live.queue_scale = scaler.scales(&w.state);
                w.round();
            };
        step(&mut w, &mut scaler, Some(0), 0);
        assert_eq!(total(&w, "orders"), 0, "an empty queue: no instance");
        assert_eq!(total(&w, "plain"), 2);
        step(&mut w, &mut scaler, Some(1), 0);
        assert_eq!(total(&w, "orders"), 1, "one message starts one instance");
        step(&mut w, &mut scaler, Some(35), 0);
        assert_eq!(total(&w, "orders"), 4, "35 messages / 10 = 4");
        step(&mut w, &mut scaler, Some(500), 0);
        assert_eq!(total(&w, "orders"), 4, "never above STROM_MAX_SCALE");
        // The leader cannot read the queue: the scale holds.
        for _ in 0..20 {
            step(&mut w, &mut scaler, None, 0);
        }
        assert_eq!(total(&w, "orders"), 4);
        // Drained, but messages still being handled: held.
        for _ in 0..20 {
            step(&mut w, &mut scaler, Some(0), 3);
        }
        assert_eq!(
            total(&w, "orders"),
            1,
            "3 in flight need 1 after the cool-down"
        );
        for _ in 0..9 {
            step(&mut w, &mut scaler, Some(0), 0);
        }
        assert_eq!(total(&w, "orders"), 1, "not before the cool-down");
        for _ in 0..3 {
            step(&mut w, &mut scaler, Some(0), 0);
        }
        assert_eq!(total(&w, "orders"), 0, "back to zero");
        assert_eq!(total(&w, "plain"), 2, "the other app never moved");

        // A new term (a new leader's scaler) keeps what it finds placed.
        step(&mut w, &mut scaler, Some(25), 0);
        assert_eq!(total(&w, "orders"), 3);
        let mut fresh = QueueScaler::default();
        w.live.queue_scale = fresh.scales(&w.state);
        assert_eq!(w.live.queue_scale.get(&app("orders")), Some(&3));
        assert_eq!(w.plan(), vec![], "nothing moves before the first read");
        step(&mut w, &mut fresh, Some(0), 0);
        assert_eq!(
            total(&w, "orders"),
            3,
            "a fresh history does not scale down"
        );
    }

    #[test]
    fn queue_scaling_settings_are_checked() {
        let e = app_requirements(&pairs(&[(MAX_SCALE_SETTING, "0")])).unwrap_err();
        assert!(
            e.contains("STROM_MAX_SCALE `0` is not a whole number from 1 to 1000"),
            "{e}"
        );
        let e = app_requirements(&pairs(&[(MAX_SCALE_SETTING, "-3")])).unwrap_err();
        assert!(e.contains("STROM_MAX_SCALE"), "{e}");
        let e = app_requirements(&pairs(&[(TARGET_QUEUE_LENGTH_SETTING, "0")])).unwrap_err();
        assert!(e.contains("STROM_TARGET_QUEUE_LENGTH `0`"), "{e}");
        let e = app_requirements(&pairs(&[(SCALE_DOWN_COOLDOWN_SETTING, "soon")])).unwrap_err();
        assert!(
            e.contains("STROM_SCALE_DOWN_COOLDOWN `soon` is not hh:mm:ss"),
            "{e}"
        );
        let r = app_requirements(&pairs(&[
            (MAX_SCALE_SETTING, " 7 "),
            (TARGET_QUEUE_LENGTH_SETTING, "50"),
            (SCALE_DOWN_COOLDOWN_SETTING, "00:02:00"),
        ]))
        .unwrap();
        assert_eq!(
            (r.max_scale, r.target_queue_length, r.scale_down_cooldown_ms),
            (Some(7), 50, 120_000)
        );
    }

    #[test]
    fn a_scale_to_zero_app_has_an_instance_only_while_its_timers_run_and_briefly_after() {
        use crate::timer_records::{FinishedRun, TimerRecord, TimerRun};
        use strom_proto::command::{TimerId, TimerOutcome};
        let mut w = World::new();
        w.worker(1, 100, 0, &[]);
        w.worker(2, 100, 0, &[("batch", "true")]);
        w.deploy(
            "nightly",
            &[
                (SCALE_TO_ZERO_SETTING, "true"),
                (IDLE_STOP_SETTING, "00:00:10"),
                (LABELS_SETTING, "batch=true"),
            ],
        );
        w.live.now_ms = 1_000_000;
        assert_eq!(w.plan(), vec![], "no instance between runs");
        let timer = TimerId {
            app: app("nightly"),
            function: "f".into(),
        };
        let mut record = TimerRecord {
            last_ms: Some(999_000),
            next_ms: 1_060_000,
            updated_ms: 999_000,
            schedule: "0 * * * * * (UTC)".into(),
            running: Some(TimerRun {
                tick_ms: 999_000,
                invocation_id: "a".into(),
                past_due: false,
                fired_at_ms: 999_000,
            }),
            last_outcome: None,
        };
        w.state.timers.insert(timer.clone(), record.clone());
        // A run is recorded: one instance, on the worker its labels pick.
        w.round();
        assert_eq!(w.placed("nightly"), vec![(2, 1)]);
        assert_eq!(
            desired_in(&w.state, &w.state.apps[&app("nightly")], w.live.now_ms),
            1
        );
        // It ended 5 s ago: the instance stays for the idle time…
        record.running = None;
        record.last_outcome = Some(FinishedRun {
            tick_ms: 999_000,
            invocation_id: "a".into(),
            outcome: TimerOutcome {
                succeeded: true,
                error: String::new(),
                duration_ms: 1000,
            },
            finished_at_ms: 995_000,
        });
        w.state.timers.insert(timer, record);
        assert_eq!(w.plan(), vec![]);
        // …and goes once it has passed.
        w.live.now_ms = 1_005_001;
        w.round();
        assert!(
            w.placed("nightly").iter().all(|(_, n)| *n == 0),
            "{:?}",
            w.placed("nightly")
        );
        // Bad values are named.
        let err = app_requirements(&pairs(&[(IDLE_STOP_SETTING, "5m")])).unwrap_err();
        assert!(err.contains("STROM_IDLE_STOP `5m`"), "{err}");
        let err = app_requirements(&pairs(&[(SCALE_TO_ZERO_SETTING, "yes")])).unwrap_err();
        assert!(err.contains("not true or false"), "{err}");
    }

    #[test]
    fn default_scale_is_two_or_one_per_worker_when_fewer() {
        let mut w = World::new();
        w.worker(1, 100, 0, &[]);
        w.deploy("orders", &[]);
        assert_eq!(
            w.plan(),
            vec![PlacementChange {
                app: app("orders"),
                node: 1,
                instances: 1
            }]
        );
        w.round();
        w.workers(2..=3);
        w.deploy("stock", &[]);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 1), (2, 1)]);
        // Worker 3 is the emptiest, then the lowest id among the equally loaded.
        assert_eq!(w.placed("stock"), vec![(1, 1), (3, 1)]);
    }

    #[test]
    fn explicit_scale_spreads_evenly_lowest_id_first() {
        let mut w = World::new();
        w.workers(1..=2);
        w.deploy("orders", &[]);
        w.scale("orders", 5);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 3), (2, 2)]);
    }

    #[test]
    fn full_workers_leave_apps_under_placed_until_room_appears() {
        let mut w = World::new();
        w.worker(1, 2, 0, &[]);
        w.worker(2, 2, 0, &[]);
        w.deploy("aa", &[]);
        w.deploy("bb", &[]);
        w.scale("aa", 3);
        w.scale("bb", 3);
        w.round();
        assert_eq!(w.placed("aa"), vec![(1, 2), (2, 1)]);
        assert_eq!(w.placed("bb"), vec![(2, 1)], "only one slot was left");
        w.worker(3, 4, 0, &[]);
        assert_eq!(w.round(), vec![(3, 2)]);
        assert_eq!(w.placed("bb"), vec![(2, 1), (3, 2)]);
    }

    #[test]
    fn memory_reservations_limit_where_instances_go() {
        let mut w = World::new();
        w.worker(1, 10, 1024, &[]);
        w.worker(2, 10, 0, &[]);
        w.deploy("big", &[(MEMORY_SETTING, "600")]);
        w.scale("big", 3);
        w.round();
        // The third instance would tie on worker 1, but 1200 MiB > 1024 MiB there.
        assert_eq!(w.placed("big"), vec![(1, 1), (2, 2)]);
        // Apps reserving nothing are not limited by memory; an app that does not fit
        // anywhere limited goes to the unlimited worker.
        w.deploy("small", &[]);
        w.deploy("mid", &[(MEMORY_SETTING, "500")]);
        w.scale("small", 2);
        w.scale("mid", 2);
        w.round();
        assert_eq!(w.placed("small"), vec![(1, 1), (2, 1)]);
        assert_eq!(w.placed("mid"), vec![(2, 2)]);
    }

    #[test]
    fn labels_restrict_apps_to_matching_workers() {
        let mut w = World::new();
        w.worker(1, 100, 0, &[("zone", "a")]);
        w.worker(2, 100, 0, &[("zone", "b"), ("gpu", "yes")]);
        w.worker(3, 100, 0, &[("zone", "b")]);
        w.deploy("ml", &[(LABELS_SETTING, "zone=b, gpu=yes")]);
        w.scale("ml", 2);
        w.deploy("web", &[(LABELS_SETTING, "zone=b")]);
        w.deploy("nowhere", &[(LABELS_SETTING, "zone=c")]);
        w.deploy("pinned", &[(LABELS_SETTING, "zone=c")]);
        w.scale("pinned", 1);
        w.round();
        assert_eq!(w.placed("ml"), vec![(2, 2)]);
        assert_eq!(w.placed("web"), vec![(2, 1), (3, 1)]);
        assert_eq!(w.placed("nowhere"), vec![], "default with no worker: 0");
        assert_eq!(w.placed("pinned"), vec![], "no worker can take it");
    }

    #[test]
    fn cordoned_worker_keeps_its_instances_but_gets_no_new_ones() {
        let mut w = World::new();
        w.workers(1..=3);
        w.deploy("orders", &[]);
        w.scale("orders", 2);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 1), (2, 1)]);
        w.schedule(2, WorkerSchedule::Cordoned);
        assert_eq!(w.plan(), vec![]);
        w.scale("orders", 4);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 2), (2, 1), (3, 1)]);
    }

    #[test]
    fn cordoning_does_not_shrink_an_app_at_default_scale() {
        let mut w = World::new();
        w.workers(1..=2);
        w.deploy("orders", &[]);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 1), (2, 1)]);
        w.schedule(2, WorkerSchedule::Cordoned);
        assert_eq!(w.plan(), vec![]);
        w.schedule(1, WorkerSchedule::Cordoned);
        assert_eq!(w.plan(), vec![], "even with every worker cordoned");
    }

    #[test]
    fn draining_moves_instances_make_before_break() {
        let mut w = World::new();
        w.workers(1..=3);
        w.deploy("orders", &[]);
        w.scale("orders", 2);
        w.round();
        w.ready(1, "orders", 1);
        w.ready(2, "orders", 1);
        w.schedule(2, WorkerSchedule::Draining);
        // The replacement goes elsewhere; the draining worker keeps serving.
        assert_eq!(w.round(), vec![(3, 1)]);
        assert_eq!(w.placed("orders"), vec![(1, 1), (2, 1), (3, 1)]);
        // Not Ready yet on worker 3: nothing changes.
        assert_eq!(w.plan(), vec![]);
        w.ready(3, "orders", 1);
        assert_eq!(w.round(), vec![(2, 0)]);
        assert_eq!(w.placed("orders"), vec![(1, 1), (3, 1)]);
    }

    #[test]
    fn instances_leave_workers_that_lose_a_required_label_make_before_break() {
        let mut w = World::new();
        w.worker(1, 100, 0, &[("zone", "a")]);
        w.worker(2, 100, 0, &[("zone", "b")]);
        w.deploy("orders", &[]);
        w.scale("orders", 1);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 1)]);
        w.ready(1, "orders", 1);
        w.settings("orders", &[(LABELS_SETTING, "zone=b")]);
        assert_eq!(w.round(), vec![(2, 1)]);
        w.ready(2, "orders", 1);
        assert_eq!(w.round(), vec![(1, 0)]);
    }

    #[test]
    fn a_down_workers_instances_are_replaced_and_nothing_returns_when_it_is_back() {
        let mut w = World::new();
        w.workers(1..=3);
        w.deploy("orders", &[]);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 1), (2, 1)]);
        w.liveness(2, false);
        assert_eq!(w.round(), vec![(2, 0), (3, 1)]);
        w.liveness(2, true);
        assert_eq!(w.plan(), vec![], "the others already run the desired count");
        assert_eq!(w.placed("orders"), vec![(1, 1), (3, 1)]);
    }

    #[test]
    fn placements_on_unregistered_workers_are_dropped_and_replaced() {
        let mut w = World::new();
        w.workers(1..=2);
        w.deploy("orders", &[]);
        w.scale("orders", 1);
        // Not reachable through commands today (RemoveWorker drops placements), but
        // the scheduler must not trust that.
        w.state
            .placements
            .insert(app("orders"), BTreeMap::from([(9, 1)]));
        let changes: Vec<(NodeId, u32)> = w.plan().iter().map(|c| (c.node, c.instances)).collect();
        assert_eq!(changes, vec![(1, 1), (9, 0)]);
    }

    #[test]
    fn scale_down_removes_from_cordoned_workers_first() {
        let mut w = World::new();
        w.workers(1..=3);
        w.deploy("orders", &[]);
        w.scale("orders", 6);
        w.round();
        assert_eq!(w.placed("orders"), vec![(1, 2), (2, 2), (3, 2)]);
        w.schedule(3, WorkerSchedule::Cordoned);
        w.scale("orders", 3);
        w.round();
        // Both from the cordoned worker, then the highest id among the fullest.
        assert_eq!(w.placed("orders"), vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn scale_down_frees_room_for_apps_earlier_in_name_order_in_the_same_round() {
        let mut w = World::new();
        w.worker(1, 2, 0, &[]);
        w.deploy("aa", &[]);
        w.deploy("zz", &[]);
        w.scale("zz", 2);
        w.round();
        assert_eq!(w.placed("aa"), vec![(1, 1)]);
        assert_eq!(w.placed("zz"), vec![(1, 1)]);
        w.scale("aa", 2);
        w.scale("zz", 0);
        w.round();
        assert_eq!(w.placed("aa"), vec![(1, 2)]);
        assert_eq!(w.placed("zz"), vec![]);
    }

    #[test]
    fn an_app_with_unparsable_settings_is_left_exactly_as_placed() {
        let mut w = World::new();
        w.workers(1..=3);
        w.deploy("orders", &[]);
        w.deploy("stock", &[]);
        w.round();
        w.settings("orders", &[(MEMORY_SETTING, "lots")]);
        w.liveness(1, false);
        // Only `stock` moves off the down worker.
        let changes = w.plan();
        assert!(changes.iter().all(|c| c.app == app("stock")), "{changes:?}");
        assert!(!changes.is_empty());
        let err = app_requirements(&w.state.apps[&app("orders")].settings).unwrap_err();
        assert!(
            err.contains(MEMORY_SETTING) && err.contains("`lots`"),
            "{err}"
        );
    }

    #[test]
    fn requirements_are_parsed_from_settings() {
        let req = app_requirements(&pairs(&[
            (MEMORY_SETTING, " 256 "),
            (LABELS_SETTING, "zone=b, gpu = yes,,"),
        ]))
        .unwrap();
        assert_eq!(req.memory_mb, 256);
        assert_eq!(req.labels, pairs(&[("zone", "b"), ("gpu", "yes")]));
        assert_eq!(
            app_requirements(&BTreeMap::new()).unwrap(),
            Requirements::default()
        );
        for (key, value, mentions) in [
            (MEMORY_SETTING, "-1", "`-1`"),
            (MEMORY_SETTING, "1.5", "`1.5`"),
            (LABELS_SETTING, "zone", "`zone` is not key=value"),
            (LABELS_SETTING, "=b", "empty key"),
            (LABELS_SETTING, "zone=a,zone=b", "contradicts `zone=a`"),
        ] {
            let err = app_requirements(&pairs(&[(key, value)])).unwrap_err();
            assert!(err.contains(key) && err.contains(mentions), "{err}");
        }
    }

    /// Random clusters and events: every round's result is stable (planning again
    /// gives nothing), respects capacity, never uses Down workers and never runs more
    /// than desired on the workers an app stays on.
    #[test]
    fn random_rounds_are_idempotent_and_respect_capacity() {
        for seed in 0..150u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut w = World::new();
            let names = ["aa", "bb", "cc", "dd"];
            for node in 1..=rng.random_range(1..=6u64) {
                let memory = if rng.random_bool(0.5) { 0 } else { 1024 };
                let zone = if rng.random_bool(0.5) { "a" } else { "b" };
                w.worker(node, rng.random_range(1..=6), memory, &[("zone", zone)]);
            }
            let nodes: Vec<NodeId> = w.state.workers.keys().copied().collect();
            for name in names {
                let mut settings = vec![];
                if rng.random_bool(0.3) {
                    settings.push((MEMORY_SETTING, "300"));
                }
                if rng.random_bool(0.3) {
                    settings.push((LABELS_SETTING, "zone=a"));
                }
                w.deploy(name, &settings);
            }
            for step in 0..30 {
                let node = nodes[rng.random_range(0..nodes.len())];
                let name = names[rng.random_range(0..names.len())];
                match rng.random_range(0..6) {
                    0 => w.liveness(node, rng.random_bool(0.5)),
                    1 => {
                        let s = [
                            WorkerSchedule::Active,
                            WorkerSchedule::Cordoned,
                            WorkerSchedule::Draining,
                        ];
                        w.schedule(node, s[rng.random_range(0..3)]);
                    }
                    2 => w.scale(name, rng.random_range(0..=8)),
                    3 => {
                        let zone = if rng.random_bool(0.5) { "zone=a" } else { "" };
                        w.settings(name, &[(LABELS_SETTING, zone)]);
                    }
                    _ => {
                        // Workers report what they run as Ready, some lagging.
                        w.live.ready.clear();
                        for (app, per_node) in &w.state.placements {
                            for (node, count) in per_node {
                                let ready = rng.random_range(0..=*count);
                                w.live.ready.insert((*node, app.clone()), ready);
                            }
                        }
                    }
                }
                let changes = w.plan();
                let at_ms = w.now();
                w.apply(Command::Place { changes, at_ms });
                let again = w.plan();
                assert!(
                    again.is_empty(),
                    "seed {seed} step {step}: second plan {again:?}; rerun \
                     `cargo test -p strom-control-plane --lib scheduler::tests::random`"
                );
                check_invariants(&w.state, seed, step);
            }
        }
    }

    fn check_invariants(state: &ClusterState, seed: u64, step: usize) {
        let ctx = format!("seed {seed} step {step}");
        for (node, worker) in &state.workers {
            let (mut load, mut memory) = (0u32, 0u64);
            for (name, per_node) in &state.placements {
                let count = per_node.get(node).copied().unwrap_or(0);
                let req = app_requirements(&state.apps[name].settings).unwrap();
                load += count;
                memory += req.memory_mb * u64::from(count);
            }
            assert!(
                worker.up || load == 0,
                "{ctx}: down worker {node} runs {load}"
            );
            assert!(
                load <= worker.info.capacity.instances,
                "{ctx}: worker {node} holds {load}"
            );
            let cap = worker.info.capacity.memory_mb;
            assert!(
                cap == 0 || memory <= cap,
                "{ctx}: worker {node} reserves {memory} MiB"
            );
        }
        for (name, app) in &state.apps {
            let req = app_requirements(&app.settings).unwrap();
            let stays = |node: &NodeId| {
                let w = &state.workers[node];
                w.up && w.schedule != WorkerSchedule::Draining
                    && req
                        .labels
                        .iter()
                        .all(|(k, v)| w.info.labels.get(k) == Some(v))
            };
            let eligible = state.workers.keys().filter(|n| stays(n)).count();
            let kept: u32 = state
                .placements
                .get(name)
                .map(|p| p.iter().filter(|(n, _)| stays(n)).map(|(_, c)| c).sum())
                .unwrap_or(0);
            let want = desired(app, eligible);
            assert!(kept <= want, "{ctx}: {name} keeps {kept} > desired {want}");
        }
    }
}

//! Rescaling one deployment's instance slots, as a pure plan.
//!
//! Slots are numbered; scaling up revives retired slots below the new count
//! first, then adds slots, and starts every slot below the count that has no
//! instance; scaling down retires the slots at and above the count (their
//! instances drain). Retired slots at the end are forgotten once their instances
//! are gone.

/// What the plan needs to know of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFacts {
    pub retired: bool,
    /// An instance (actor) is alive in it.
    pub running: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// Retired slots that serve again.
    pub revive: Vec<u32>,
    /// New slots to append.
    pub add: u32,
    /// Slots to start an instance in (after reviving and adding).
    pub start: Vec<u32>,
    /// Slots to retire (their instances drain).
    pub retire: Vec<u32>,
}

/// The plan that brings `slots` to `n` active slots.
pub fn rescale(slots: &[SlotFacts], n: u32) -> ScalePlan {
    let active = slots.iter().filter(|s| !s.retired).count() as u32;
    let mut plan = ScalePlan::default();
    if n > active {
        plan.revive = slots
            .iter()
            .enumerate()
            .take(n as usize)
            .filter(|(_, s)| s.retired)
            .map(|(i, _)| i as u32)
            .collect();
        plan.add = n.saturating_sub(slots.len() as u32);
        plan.start = (0..n)
            .filter(|i| slots.get(*i as usize).is_none_or(|s| !s.running))
            .collect();
    } else {
        plan.retire = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i as u32 >= n && !s.retired)
            .map(|(i, _)| i as u32)
            .collect();
    }
    plan
}

/// How many slots to keep: retired slots at the end with no instance left go.
pub fn kept_len(slots: &[SlotFacts]) -> usize {
    slots
        .iter()
        .rposition(|s| !s.retired || s.running)
        .map(|i| i + 1)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(retired: bool, running: bool) -> SlotFacts {
        SlotFacts { retired, running }
    }

    #[test]
    fn scaling_up_revives_then_adds_then_starts_what_is_empty() {
        // Slot 1 was retired and is still draining; slot 2 retired and gone.
        let slots = [slot(false, true), slot(true, true), slot(true, false)];
        let p = rescale(&slots, 4);
        assert_eq!(p.revive, vec![1, 2]);
        assert_eq!(p.add, 1);
        // Slot 1 still has its (draining) instance: it is replaced when it ends.
        assert_eq!(p.start, vec![2, 3]);
        assert!(p.retire.is_empty());
    }

    #[test]
    fn scaling_down_retires_from_the_top() {
        let slots = [slot(false, true), slot(false, true), slot(false, false)];
        let p = rescale(&slots, 1);
        assert_eq!(p.retire, vec![1, 2]);
        assert_eq!(
            p,
            ScalePlan {
                retire: vec![1, 2],
                ..ScalePlan::default()
            }
        );
        // Nothing to do at the same count.
        assert_eq!(rescale(&slots, 3), ScalePlan::default());
    }

    #[test]
    fn retired_empty_slots_at_the_end_are_forgotten() {
        let slots = [slot(false, true), slot(true, true), slot(true, false)];
        assert_eq!(kept_len(&slots), 2);
        assert_eq!(kept_len(&[slot(true, false)]), 0);
        assert_eq!(kept_len(&[slot(true, false), slot(false, false)]), 2);
    }
}

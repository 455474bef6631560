//! The aggregator as plain data for the checkpoint (`pipeline::checkpoint`): every series'
//! window, the unflagged baselines, the distinct-user sketches and flag usage. What changed
//! since the rules last looked is not kept: a restored aggregator's first full pass judges
//! every slice anyway.

use serde::{Deserialize, Serialize};

use super::window::image::WindowImage;
use super::{Aggregator, FastMap, Window};
use crate::model::{Dims, FlagKey, SeriesKey, Variant};
use crate::stats::distinct::Distinct;
use crate::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregatorImage {
    series: Vec<(SeriesImage, WindowImage)>,
    unflagged: Vec<(DimsImage, WindowImage)>,
    /// (flag, variant, the sketch's smallest hashes).
    users: Vec<(String, String, Vec<u64>)>,
    /// (flag, variant, first ms, last ms).
    usage: Vec<(String, String, u64, u64)>,
    overflow: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesImage {
    flag: String,
    variant: String,
    dims: DimsImage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimsImage {
    service: String,
    environment: String,
    region: String,
}

impl From<&SeriesKey> for SeriesImage {
    fn from(key: &SeriesKey) -> Self {
        SeriesImage { flag: key.flag.to_string(), variant: key.variant.to_string(), dims: (&key.dims).into() }
    }
}

impl From<SeriesImage> for SeriesKey {
    fn from(image: SeriesImage) -> Self {
        SeriesKey { flag: FlagKey(image.flag.into()), variant: Variant(image.variant.into()), dims: image.dims.into() }
    }
}

impl From<&Dims> for DimsImage {
    fn from(dims: &Dims) -> Self {
        DimsImage { service: dims.service.to_string(), environment: dims.environment.to_string(), region: dims.region.to_string() }
    }
}

impl From<DimsImage> for Dims {
    fn from(image: DimsImage) -> Self {
        Dims { service: image.service.into(), environment: image.environment.into(), region: image.region.into() }
    }
}

/// A cohort's key from an image's strings.
fn cohort(flag: String, variant: String) -> (FlagKey, Variant) {
    (FlagKey(flag.into()), Variant(variant.into()))
}

/// Every window of an image, restored (checked) before any is used.
#[allow(clippy::type_complexity)]
fn windows(
    series: Vec<(SeriesImage, WindowImage)>,
    unflagged: Vec<(DimsImage, WindowImage)>,
) -> Result<(Vec<(SeriesKey, Window)>, Vec<(Dims, Window)>), String> {
    let series = series
        .into_iter()
        .map(|(key, window)| {
            let key = SeriesKey::from(key);
            let window = window.restore().map_err(|e| format!("series {}/{}: {e}", key.flag, key.variant))?;
            Ok((key, window))
        })
        .collect::<Result<_, String>>()?;
    let unflagged = unflagged
        .into_iter()
        .map(|(dims, window)| {
            let dims = Dims::from(dims);
            let window = window.restore().map_err(|e| format!("unflagged {}: {e}", dims.service))?;
            Ok((dims, window))
        })
        .collect::<Result<_, String>>()?;
    Ok((series, unflagged))
}

/// What a restore brought back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub series: usize,
    /// Series of the image past this aggregator's `max_series` (a smaller cap than when written).
    pub over_cap: usize,
}

impl AggregatorImage {
    /// The image in parts of at most `series` series each (a bootstrap's frames); the
    /// baselines, sketches and usage travel with the first part.
    pub fn split(mut self, series: usize) -> Vec<AggregatorImage> {
        let mut parts = Vec::new();
        let mut rest = std::mem::take(&mut self.series);
        while rest.len() > series.max(1) {
            let tail = rest.split_off(series.max(1));
            parts.push(AggregatorImage { series: rest, unflagged: Vec::new(), users: Vec::new(), usage: Vec::new(), overflow: 0 });
            rest = tail;
        }
        self.series = rest;
        parts.insert(0, self);
        parts
    }

    /// Series in this image.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// About how many bytes the image encodes to.
    pub fn size_hint(&self) -> usize {
        let windows: usize = self.series.iter().map(|(_, w)| w.size_hint()).chain(self.unflagged.iter().map(|(_, w)| w.size_hint())).sum();
        windows + self.users.iter().map(|(_, _, hashes)| hashes.len() * 9).sum::<usize>()
    }
}

impl Aggregator {
    /// Every series' key: a checkpoint taken a slice at a time walks these.
    pub fn series_keys(&self) -> Vec<SeriesKey> {
        self.series.keys().cloned().collect()
    }

    /// One series' part of the image (`None`: dropped since).
    pub fn image_of(&self, key: &SeriesKey) -> Option<(SeriesImage, WindowImage)> {
        self.series.get(key).map(|w| (key.into(), w.image()))
    }

    /// The image with the series' parts taken before (by [`Aggregator::image_of`]) and
    /// everything else taken now.
    pub fn image_with(&self, series: Vec<(SeriesImage, WindowImage)>) -> AggregatorImage {
        AggregatorImage {
            series,
            unflagged: self.unflagged.iter().map(|(d, w)| (d.into(), w.image())).collect(),
            users: self.users.iter().map(|((f, v), d)| (f.to_string(), v.to_string(), d.smallest().collect())).collect(),
            usage: self.usage.iter().map(|((f, v), (first, last))| (f.to_string(), v.to_string(), first.as_millis(), last.as_millis())).collect(),
            overflow: self.overflow,
        }
    }

    /// The whole image at once.
    pub fn image(&self) -> AggregatorImage {
        self.image_with(self.series.iter().map(|(k, w)| (k.into(), w.image())).collect())
    }

    /// Adds a shard's delta (the image of a fresh aggregator fed since its last flush) into
    /// these windows at `now`; checked whole first. Returns the series it touched.
    pub fn apply_delta(&mut self, delta: AggregatorImage, now: Timestamp) -> Result<usize, String> {
        self.add_image(delta, now, |target, window, now| target.add_delta(&window, now))
    }

    /// Adds a shard's whole windows (bootstrap of an evaluator that has none of its data).
    pub fn merge_image(&mut self, image: AggregatorImage, now: Timestamp) -> Result<usize, String> {
        self.add_image(image, now, |target, window, now| target.add_window(window, now))
    }

    fn add_image(&mut self, image: AggregatorImage, now: Timestamp, add: impl Fn(&mut Window, Window, Timestamp)) -> Result<usize, String> {
        let (series, unflagged) = windows(image.series, image.unflagged)?;
        let touched = series.len();
        for (key, window) in series {
            if let Some(target) = self.window(key) {
                add(target, window, now);
            }
        }
        for (dims, window) in unflagged {
            if let Some(target) = self.unflagged_window(&dims) {
                add(target, window, now);
            }
        }
        for (f, v, smallest) in image.users {
            if let Some(users) = self.cohort_users(cohort(f, v)) {
                users.merge(&Distinct::from_smallest(smallest));
            }
        }
        for (f, v, first, last) in image.usage {
            let key = cohort(f, v);
            if self.usage.len() < self.max_series || self.usage.contains_key(&key) {
                let entry = self.usage.entry(key).or_insert((Timestamp(first), Timestamp(last)));
                entry.0 = entry.0.min(Timestamp(first));
                entry.1 = entry.1.max(Timestamp(last));
            }
        }
        Ok(touched)
    }

    /// Replaces this aggregator's state with the image's, keeping its own `max_series`; the
    /// image is checked whole before anything is replaced.
    pub fn restore(&mut self, image: AggregatorImage) -> Result<Restored, String> {
        let cap = self.max_series;
        let (all, unflagged) = windows(image.series, image.unflagged)?;
        let restored = Restored { series: all.len().min(cap), over_cap: all.len().saturating_sub(cap) };
        let series: FastMap<_, _> = all.into_iter().take(cap).collect();
        let unflagged = unflagged.into_iter().take(cap).collect();
        let users = image.users.into_iter().take(cap).map(|(f, v, smallest)| (cohort(f, v), Distinct::from_smallest(smallest))).collect();
        let usage = image.usage.into_iter().take(cap).map(|(f, v, first, last)| (cohort(f, v), (Timestamp(first), Timestamp(last)))).collect();
        self.series = series;
        self.unflagged = unflagged;
        self.users = users;
        self.usage = usage;
        self.overflow = image.overflow;
        self.changed.clear();
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::Sink;
    use crate::model::{Evaluation, Outcome, SpanId, TraceId};

    fn fed(max_series: usize) -> Aggregator {
        let mut agg = Aggregator::new(max_series);
        for i in 0..3_000u64 {
            let dims = Dims { service: format!("svc-{}", i % 3).into(), environment: "prod".into(), region: "eu".into() };
            let flag = FlagKey(format!("flag-{}", i % 4).into());
            let variant = Variant(if i % 2 == 0 { "on" } else { "off" }.into());
            let now = Timestamp(10_000_000 + i * 700);
            let evaluation =
                Evaluation { trace: None, flag: flag.clone(), variant: Some(variant.clone()), error_type: None, context: Some(i % 500), dims: dims.clone() };
            agg.exposure(&evaluation, now);
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&i.to_le_bytes());
            let outcome = Outcome { trace: TraceId(trace), span: SpanId([1; 8]), dims: dims.clone(), error: i % 13 == 0, latency_us: 500 + i % 4_000 };
            agg.observe(&flag, &variant, &outcome, Some(i % 500), now);
            Sink::unflagged(&mut agg, &dims, i % 29 == 0, 700, now);
        }
        agg
    }

    /// Images list map entries in hash order: compare them sorted.
    fn sorted(mut image: AggregatorImage) -> AggregatorImage {
        image.series.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        image.unflagged.sort_by(|a, b| a.0.service.cmp(&b.0.service));
        image.users.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        image.usage.sort();
        image
    }

    #[test]
    fn a_restored_aggregator_holds_the_same_state() {
        let agg = fed(1_000);
        let mut restored = Aggregator::new(1_000);
        let outcome = restored.restore(agg.image()).expect("restores");
        assert_eq!(outcome, Restored { series: agg.series_count(), over_cap: 0 });
        assert_eq!(sorted(restored.image()), sorted(agg.image()), "same windows, sketches and usage");
        assert_eq!(restored.distinct_users(&FlagKey("flag-1".into()), "off"), agg.distinct_users(&FlagKey("flag-1".into()), "off"));
        assert!(restored.take_changed().is_empty(), "nothing is new after a restore");
    }

    #[test]
    fn a_smaller_cap_keeps_what_fits_and_counts_the_rest() {
        let agg = fed(1_000);
        let mut small = Aggregator::new(5);
        let outcome = small.restore(agg.image()).expect("restores");
        assert_eq!(outcome.series, 5);
        assert_eq!(outcome.over_cap, agg.series_count() - 5);
    }
}

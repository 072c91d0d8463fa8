//! Label tables that cap the number of distinct label sets and fold the rest into "other".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{EndpointCounters, MAX_LABEL_LEN, OVERFLOW_LABEL};

/// Endpoint name -> its counters, at most `max` names plus the overflow one.
#[derive(Debug)]
pub(crate) struct EndpointTable {
    max: usize,
    map: RwLock<BTreeMap<String, Arc<EndpointCounters>>>,
}

impl EndpointTable {
    pub(crate) fn new(max: usize) -> EndpointTable {
        EndpointTable { max, map: RwLock::default() }
    }

    pub(crate) fn get_or_insert(&self, endpoint: &str) -> Arc<EndpointCounters> {
        let endpoint = clip(endpoint);
        if let Some(counters) = read(&self.map).get(endpoint) {
            return Arc::clone(counters);
        }
        let mut map = write(&self.map);
        let key = if map.contains_key(endpoint) || map.len() < self.max {
            endpoint
        } else {
            OVERFLOW_LABEL
        };
        if let Some(counters) = map.get(key) {
            return Arc::clone(counters);
        }
        let counters = Arc::new(EndpointCounters::default());
        map.insert(key.to_owned(), Arc::clone(&counters));
        counters
    }

    /// A copy of the table (names and shared counters), sorted by name.
    pub(crate) fn entries(&self) -> Vec<(String, Arc<EndpointCounters>)> {
        read(&self.map)
            .iter()
            .map(|(name, counters)| (name.clone(), Arc::clone(counters)))
            .collect()
    }
}

/// Counters labelled by (endpoint, value), at most `max` pairs plus the overflow pair.
#[derive(Debug)]
pub(crate) struct LabeledCounters {
    max: usize,
    pairs: RwLock<Pairs>,
}

#[derive(Debug, Default)]
struct Pairs {
    by_endpoint: BTreeMap<String, BTreeMap<String, AtomicU64>>,
    len: usize,
}

impl LabeledCounters {
    pub(crate) fn new(max: usize) -> LabeledCounters {
        LabeledCounters { max, pairs: RwLock::default() }
    }

    pub(crate) fn inc(&self, endpoint: &str, value: &str) {
        let (endpoint, value) = (clip(endpoint), clip(value));
        if let Some(counter) = read(&self.pairs).get(endpoint, value) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut pairs = write(&self.pairs);
        let (endpoint, value) = if pairs.get(endpoint, value).is_some() || pairs.len < self.max {
            (endpoint, value)
        } else {
            (OVERFLOW_LABEL, OVERFLOW_LABEL)
        };
        pairs.get_or_insert(endpoint, value).fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `f(endpoint, value, count)` for every pair, sorted by endpoint then value.
    pub(crate) fn visit<E>(
        &self,
        mut f: impl FnMut(&str, &str, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let pairs = read(&self.pairs);
        for (endpoint, values) in &pairs.by_endpoint {
            for (value, counter) in values {
                f(endpoint, value, counter.load(Ordering::Relaxed))?;
            }
        }
        Ok(())
    }

    /// Counts per value, summed over endpoints.
    pub(crate) fn by_value(&self) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::<String, u64>::new();
        let visited = self.visit(|_, value, count| {
            match sums.get_mut(value) {
                Some(sum) => *sum += count,
                None => {
                    sums.insert(value.to_owned(), count);
                }
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(()) = visited;
        sums
    }

    /// The sum of every counter.
    pub(crate) fn total(&self) -> u64 {
        let mut total = 0;
        let visited = self.visit(|_, _, count| {
            total += count;
            Ok::<(), std::convert::Infallible>(())
        });
        let Ok(()) = visited;
        total
    }
}

impl Pairs {
    fn get(&self, endpoint: &str, value: &str) -> Option<&AtomicU64> {
        self.by_endpoint.get(endpoint)?.get(value)
    }

    /// Only called on a miss, under the write lock, so the key copies do not matter.
    fn get_or_insert(&mut self, endpoint: &str, value: &str) -> &AtomicU64 {
        let values = self.by_endpoint.entry(endpoint.to_owned()).or_default();
        values.entry(value.to_owned()).or_insert_with(|| {
            self.len += 1;
            AtomicU64::new(0)
        })
    }
}

/// Cuts a label value to at most [`MAX_LABEL_LEN`] bytes, at a character boundary.
pub(crate) fn clip(value: &str) -> &str {
    if value.len() <= MAX_LABEL_LEN {
        return value;
    }
    let mut end = MAX_LABEL_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Writes `n` in decimal into `buf` without allocating.
pub(crate) fn format_u16(n: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = n;
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[start..]).unwrap_or(OVERFLOW_LABEL)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // No code panics while holding these locks; if one did, the counters are still valid.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

//! Per-CPU counters: plain adds, no atomics, since each CPU owns its copy.

use ingress_common::Reason;

use crate::maps::{BACKEND_STATS, REASON_STATS, SERVICE_STATS};

#[inline(always)]
pub(crate) fn count_reason(reason: Reason) {
    if let Some(counter) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_forward(service_id: u32, backend_id: u32, bytes: u64) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
    }
}

#[inline(always)]
pub(crate) fn count_new_flow(service_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*counters).new_flows += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_no_backend(service_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*counters).no_backend += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_rejected(service_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*counters).rejected += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_snat_failure(service_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*counters).snat_failures += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_denied(service_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*counters).denied += 1 };
    }
}

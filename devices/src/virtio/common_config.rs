//! The common configuration structure of a virtio-pci function (virtio 1.2 section 4.1.4.3):
//! feature negotiation windows, device status, and the per-queue setup registers. Plain
//! state; the transport ([`super::pci`]) acts on status changes.
//!
//! Every field is accessed with its natural width (4.1.3.1); the 64-bit queue addresses also
//! as one 8-byte access. Anything else reads as 0 and is dropped on write.

/// The driver found the device (virtio 1.2 section 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// The driver knows how to drive the device (2.1).
pub const STATUS_DRIVER: u8 = 2;
/// The driver is set up and ready to drive the device (2.1).
pub const STATUS_DRIVER_OK: u8 = 4;
/// Feature negotiation is complete (2.1).
pub const STATUS_FEATURES_OK: u8 = 8;
/// The device hit an error it cannot recover from (2.1).
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// The driver gave up on the device (2.1).
pub const STATUS_FAILED: u8 = 0x80;

/// "No vector" for config_msix_vector and queue_msix_vector (4.1.4.3, 4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// Register offsets in the common configuration structure (4.1.4.3).
pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub const DEVICE_FEATURE: u64 = 0x04;
pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub const DRIVER_FEATURE: u64 = 0x0c;
pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub const NUM_QUEUES: u64 = 0x12;
pub const DEVICE_STATUS: u64 = 0x14;
pub const CONFIG_GENERATION: u64 = 0x15;
pub const QUEUE_SELECT: u64 = 0x16;
pub const QUEUE_SIZE: u64 = 0x18;
pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub const QUEUE_ENABLE: u64 = 0x1c;
pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub const QUEUE_DESC: u64 = 0x20;
pub const QUEUE_DRIVER: u64 = 0x28;
pub const QUEUE_DEVICE: u64 = 0x30;

/// Alignment of the descriptor table, driver area and device area of a split virtqueue
/// (virtio 1.2 section 2.7, table "Virtqueue Part Alignment").
pub const DESC_ALIGN: u64 = 16;
pub const DRIVER_ALIGN: u64 = 2;
pub const DEVICE_ALIGN: u64 = 4;

/// One queue's registers as the driver set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRegs {
    /// The device's maximum (what queue_size reads after reset).
    pub max_size: u16,
    pub size: u16,
    pub msix_vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Why this queue's setup is not one a device can use (2.7, 4.1.4.3.2), if it is not.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Some("queue size");
        }
        if !self.desc.is_multiple_of(DESC_ALIGN) {
            return Some("descriptor table alignment");
        }
        if !self.driver.is_multiple_of(DRIVER_ALIGN) {
            return Some("driver area alignment");
        }
        if !self.device.is_multiple_of(DEVICE_ALIGN) {
            return Some("device area alignment");
        }
        None
    }
}

/// What a guest write did that the transport must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonWrite {
    /// Nothing more to do.
    Done,
    /// device_status was written with this value.
    Status(u8),
    /// queue_enable = 1 on a queue whose setup is invalid (the reason).
    BadQueue(&'static str),
}

/// The common configuration registers of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonConfig {
    pub device_feature_select: u32,
    pub driver_feature_select: u32,
    /// What the device offers (device-type bits plus the transport's).
    pub device_features: u64,
    /// What the driver wrote (it may name bits not offered; FEATURES_OK then fails).
    pub driver_features: u64,
    pub config_msix_vector: u16,
    pub status: u8,
    pub config_generation: u8,
    pub queue_select: u16,
    pub queues: Vec<QueueRegs>,
    /// MSI-X table entries: a vector number at or past it reads back as NO_VECTOR.
    pub msix_vectors: u16,
}

impl CommonConfig {
    pub fn new(device_features: u64, queue_max_sizes: &[u16], msix_vectors: u16) -> Self {
        CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            device_features,
            driver_features: 0,
            config_msix_vector: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|m| QueueRegs::new(*m)).collect(),
            msix_vectors,
        }
    }

    /// Back to the state after reset (2.4): the offer and the queue maxima stay.
    pub fn reset(&mut self) {
        let maxima: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = CommonConfig::new(self.device_features, &maxima, self.msix_vectors);
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue, if the driver may still set it up: it exists, is not enabled, and
    /// the device is not running (4.1.4.3.2).
    fn selected_setup(&mut self) -> Option<&mut QueueRegs> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled)
    }

    /// A vector number as the device keeps it: one it has no table entry for reads back as
    /// NO_VECTOR (4.1.5.1.2.1).
    fn vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let q = self.selected();
        let half = |v: u64, select: u32| match select {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => half(self.device_features, self.device_feature_select).into(),
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => half(self.driver_features, self.driver_feature_select).into(),
            (CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector.into(),
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => self.status.into(),
            (CONFIG_GENERATION, 1) => self.config_generation.into(),
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            // A queue that does not exist reads queue_size 0 (4.1.4.3.2).
            (QUEUE_SIZE, 2) => q.map_or(0, |q| q.size).into(),
            (QUEUE_MSIX_VECTOR, 2) => q.map_or(VIRTIO_MSI_NO_VECTOR, |q| q.msix_vector).into(),
            (QUEUE_ENABLE, 2) => q.is_some_and(|q| q.enabled).into(),
            // Queue i notifies at i * multiplier.
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| self.queue_select).into(),
            (o, 4 | 8) if (QUEUE_DESC..QUEUE_DEVICE + 8).contains(&o) => {
                let Some(q) = q else { return };
                let field = match (o - QUEUE_DESC) / 8 {
                    0 => q.desc,
                    1 => q.driver,
                    _ => q.device,
                };
                match (o % 8, data.len()) {
                    (0, 8) => field,
                    (0, 4) => field & 0xffff_ffff,
                    (4, 4) => field >> 32,
                    _ => return,
                }
            }
            _ => return,
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonWrite {
        let mut b = [0u8; 8];
        let Some(dst) = b.get_mut(..data.len()) else {
            return CommonWrite::Done;
        };
        dst.copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            // Features are fixed once FEATURES_OK is set (3.1.1).
            (DRIVER_FEATURE, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return CommonWrite::Done,
                };
                self.driver_features =
                    (self.driver_features & !(0xffff_ffff << shift)) | (v << shift);
            }
            (CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector = self.vector(v as u16),
            (DEVICE_STATUS, 1) => return CommonWrite::Status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.selected_setup() {
                    let size = v as u16;
                    // A size the device cannot take is dropped: the driver reads back the
                    // old one (2.7: a power of 2, at most the maximum).
                    if size != 0 && size.is_power_of_two() && size <= q.max_size {
                        q.size = size;
                    }
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.vector(v as u16);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    q.msix_vector = vector;
                }
            }
            // Writing 0 is not allowed (4.1.4.3.2): dropped.
            (QUEUE_ENABLE, 2) if v == 1 => {
                if let Some(q) = self.selected_setup() {
                    if let Some(why) = q.invalid() {
                        return CommonWrite::BadQueue(why);
                    }
                    q.enabled = true;
                }
            }
            (o, 4 | 8) if (QUEUE_DESC..QUEUE_DEVICE + 8).contains(&o) => {
                let len = data.len();
                let Some(q) = self.selected_setup() else {
                    return CommonWrite::Done;
                };
                let field = match (o - QUEUE_DESC) / 8 {
                    0 => &mut q.desc,
                    1 => &mut q.driver,
                    _ => &mut q.device,
                };
                match (o % 8, len) {
                    (0, 8) => *field = v,
                    (0, 4) => *field = (*field & !0xffff_ffff) | v,
                    (4, 4) => *field = (*field & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            _ => {}
        }
        CommonWrite::Done
    }
}

#[cfg(test)]
mod tests;

use super::*;

fn cfg() -> CommonConfig {
    CommonConfig::new(0x1_0000_0001, &[256, 64], 3)
}

fn r16(c: &CommonConfig, off: u64) -> u16 {
    let mut b = [0u8; 2];
    c.read(off, &mut b);
    u16::from_le_bytes(b)
}

fn r32(c: &CommonConfig, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w16(c: &mut CommonConfig, off: u64, v: u16) -> CommonWrite {
    c.write(off, &v.to_le_bytes())
}

fn w32(c: &mut CommonConfig, off: u64, v: u32) -> CommonWrite {
    c.write(off, &v.to_le_bytes())
}

#[test]
fn device_feature_select_picks_each_half() {
    let mut c = cfg();
    assert_eq!(r32(&c, DEVICE_FEATURE), 1);
    w32(&mut c, DEVICE_FEATURE_SELECT, 1);
    assert_eq!(r32(&c, DEVICE_FEATURE), 1);
    w32(&mut c, DEVICE_FEATURE_SELECT, 2);
    assert_eq!(r32(&c, DEVICE_FEATURE), 0);
}

#[test]
fn driver_feature_after_features_ok_is_dropped() {
    let mut c = cfg();
    w32(&mut c, DRIVER_FEATURE, 1);
    c.status = STATUS_FEATURES_OK;
    w32(&mut c, DRIVER_FEATURE, 3);
    assert_eq!(c.driver_features, 1);
}

#[test]
fn queue_size_not_power_of_two_is_dropped() {
    let mut c = cfg();
    w16(&mut c, QUEUE_SIZE, 100);
    assert_eq!(r16(&c, QUEUE_SIZE), 256);
    w16(&mut c, QUEUE_SIZE, 128);
    assert_eq!(r16(&c, QUEUE_SIZE), 128);
}

#[test]
fn queue_size_above_max_is_dropped() {
    let mut c = cfg();
    w16(&mut c, QUEUE_SELECT, 1);
    w16(&mut c, QUEUE_SIZE, 128);
    assert_eq!(r16(&c, QUEUE_SIZE), 64);
}

#[test]
fn queue_select_past_the_last_queue_reads_size_zero() {
    let mut c = cfg();
    w16(&mut c, QUEUE_SELECT, 2);
    assert_eq!(r16(&c, QUEUE_SIZE), 0);
    assert_eq!(r16(&c, NUM_QUEUES), 2);
}

#[test]
fn queue_enable_with_misaligned_descriptor_table_is_a_guest_error() {
    let mut c = cfg();
    w32(&mut c, QUEUE_DESC, 0x1008);
    assert_eq!(
        w16(&mut c, QUEUE_ENABLE, 1),
        CommonWrite::BadQueue("descriptor table alignment")
    );
    assert_eq!(r16(&c, QUEUE_ENABLE), 0);
}

#[test]
fn queue_enable_with_misaligned_device_area_is_a_guest_error() {
    let mut c = cfg();
    w32(&mut c, QUEUE_DEVICE, 0x1002);
    assert!(matches!(
        w16(&mut c, QUEUE_ENABLE, 1),
        CommonWrite::BadQueue(_)
    ));
}

#[test]
fn queue_address_halves_compose_and_read_back() {
    let mut c = cfg();
    w32(&mut c, QUEUE_DRIVER, 0x2000);
    w32(&mut c, QUEUE_DRIVER + 4, 0x1);
    assert_eq!(c.queues[0].driver, 0x1_0000_2000);
    assert_eq!(r32(&c, QUEUE_DRIVER + 4), 1);
    c.write(QUEUE_DEVICE, &0x3_0000_4000_u64.to_le_bytes());
    assert_eq!(c.queues[0].device, 0x3_0000_4000);
}

#[test]
fn queue_fields_after_driver_ok_are_dropped() {
    let mut c = cfg();
    c.status = STATUS_DRIVER_OK;
    w32(&mut c, QUEUE_DESC, 0x1000);
    w16(&mut c, QUEUE_SIZE, 16);
    w16(&mut c, QUEUE_ENABLE, 1);
    assert_eq!(c.queues[0].desc, 0);
    assert_eq!(c.queues[0].size, 256);
    assert!(!c.queues[0].enabled);
}

#[test]
fn queue_fields_of_an_enabled_queue_are_dropped() {
    let mut c = cfg();
    w16(&mut c, QUEUE_ENABLE, 1);
    w32(&mut c, QUEUE_DESC, 0x1000);
    assert_eq!(c.queues[0].desc, 0);
}

#[test]
fn msix_vector_past_the_table_reads_no_vector() {
    let mut c = cfg();
    w16(&mut c, CONFIG_MSIX_VECTOR, 3);
    assert_eq!(r16(&c, CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    w16(&mut c, QUEUE_MSIX_VECTOR, 2);
    assert_eq!(r16(&c, QUEUE_MSIX_VECTOR), 2);
    w16(&mut c, QUEUE_MSIX_VECTOR, 7);
    assert_eq!(r16(&c, QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
}

#[test]
fn status_write_is_handed_to_the_transport() {
    let mut c = cfg();
    assert_eq!(c.write(DEVICE_STATUS, &[3]), CommonWrite::Status(3));
}

#[test]
fn odd_sized_access_reads_zero_and_is_dropped() {
    let mut c = cfg();
    c.write(QUEUE_SIZE, &[4]);
    assert_eq!(c.queues[0].size, 256);
    let mut b = [0xffu8; 1];
    c.read(QUEUE_SIZE, &mut b);
    assert_eq!(b, [0]);
}

#[test]
fn reset_returns_every_register_to_its_reset_value() {
    let mut c = cfg();
    w32(&mut c, DRIVER_FEATURE, 1);
    w16(&mut c, QUEUE_SELECT, 1);
    w16(&mut c, QUEUE_SIZE, 16);
    w16(&mut c, QUEUE_ENABLE, 1);
    w16(&mut c, CONFIG_MSIX_VECTOR, 0);
    c.status = 0xf;
    c.reset();
    assert_eq!(c, cfg());
}

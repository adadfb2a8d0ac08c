use super::*;

#[test]
fn lab_down_removes_only_the_lab_roles() {
    for name in ["xi-client", "xi-node", "xi-lan", "xi-b1", "xi-b12"] {
        assert!(is_fixed_lab_name("xi", name), "{name}");
    }
    for name in [
        "xi-b",
        "xi-bx",
        "xi-node-123",
        "xin-node",
        "xi",
        "other-node",
        "xi-x1",
    ] {
        assert!(!is_fixed_lab_name("xi", name), "{name}");
    }
}

#[test]
fn backend_links_parse_and_print() -> Result<()> {
    for link in [BackendLink::Shared, BackendLink::PerBackend] {
        assert_eq!(link.to_string().parse::<BackendLink>()?, link);
    }
    assert!("bridge".parse::<BackendLink>().is_err());
    Ok(())
}

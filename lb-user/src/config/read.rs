//! From the position-keeping tree to the typed [`Config`], collecting every problem on the way.
//!
//! Each table is read by one function that knows its keys; a key that is missing or invalid is reported and replaced
//! by its default so that reading goes on and later problems are found too. The caller throws the half-built config
//! away as soon as one problem was reported.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::tree::{Entry, Node, Spanned};
use super::*;

/// A problem before it is given a file name and a line: the byte offset it points at and the message.
pub(super) type RawProblem = (usize, String);

type Entries = [Entry];

/// Keys of every table, used both to reject unknown keys and to say where a misplaced key belongs.
pub(super) const ROOT_KEYS: &[&str] = &[
    "interface",
    "xdp_mode",
    "conntrack_entries",
    "local_clients",
    "vip",
    "vrrp",
    "control",
    "metrics",
    "service",
    "instance",
];
/// Keys of an `[[instance]]` table: what the single form has at the top level for its one instance.
pub(super) const INSTANCE_KEYS: &[&str] = &["name", "interface", "vip", "vrrp", "service"];
pub(super) const VIP_KEYS: &[&str] = &["address", "addresses", "hostname"];
pub(super) const VRRP_KEYS: &[&str] = &[
    "vrid",
    "priority",
    "advert_interval_ms",
    "preempt",
    "preempt_delay_ms",
    "source_address",
    "unicast_peers",
    "checksum",
    "garp_count",
    "garp_repeat_delay_ms",
    "garp_refresh_ms",
    "backend_loss_penalty",
];
pub(super) const CONTROL_KEYS: &[&str] = &["socket"];
pub(super) const METRICS_KEYS: &[&str] = &["listen"];
pub(super) const SERVICE_KEYS: &[&str] = &["name", "port", "protocol", "forwarding", "backends", "health"];
pub(super) const BACKEND_KEYS: &[&str] = &["address", "port", "weight"];
pub(super) const HEALTH_KEYS: &[&str] = &[
    "check",
    "path",
    "expect_status",
    "interval_ms",
    "timeout_ms",
    "rise",
    "fall",
    "tls_verify",
    "ca_file",
    "server_name",
];

/// Where each key lives, for "`priority` belongs in [vrrp]" hints: in the single form,
const KEY_HOMES: &[(&str, &[&str])] = &[
    (TOP_LEVEL, ROOT_KEYS),
    ("[vip]", VIP_KEYS),
    ("[vrrp]", VRRP_KEYS),
    ("[control]", CONTROL_KEYS),
    ("[metrics]", METRICS_KEYS),
    ("[[service]]", SERVICE_KEYS),
    ("a backend entry ({ address = ..., port = ..., weight = ... })", BACKEND_KEYS),
    ("[service.health]", HEALTH_KEYS),
];
/// and in a file of `[[instance]]` tables.
const INSTANCE_KEY_HOMES: &[(&str, &[&str])] = &[
    (TOP_LEVEL, ROOT_KEYS),
    ("[[instance]]", INSTANCE_KEYS),
    ("[instance.vip]", VIP_KEYS),
    ("[instance.vrrp]", VRRP_KEYS),
    ("[control]", CONTROL_KEYS),
    ("[metrics]", METRICS_KEYS),
    ("[[instance.service]]", SERVICE_KEYS),
    ("a backend entry ({ address = ..., port = ..., weight = ... })", BACKEND_KEYS),
    ("[instance.service.health]", HEALTH_KEYS),
];

const TOP_LEVEL: &str = "the top level";

/// The longest interface name Linux accepts (IFNAMSIZ minus the terminating NUL).
const IFNAME_MAX: usize = 15;
/// The longest path a Unix socket address can hold (`sun_path` is 108 bytes, one is the NUL).
const SOCKET_PATH_MAX: usize = 107;
/// Service names appear in logs and in `xvip status`; keep them short enough for a table column.
const SERVICE_NAME_MAX: usize = 64;
/// Instance names too; they are also metric labels, so only letters, digits, `-`, `_` and `.`.
const INSTANCE_NAME_MAX: usize = 64;

/// Reads a whole document.
pub(super) fn read(entries: &Entries) -> Result<Config, Vec<RawProblem>> {
    let mut r = Reader::default();
    let config = r.root(entries);
    if r.problems.is_empty() {
        Ok(config)
    } else {
        // Report top to bottom, the way a user fixes a file; the sort is stable so problems at one place keep
        // their order.
        r.problems.sort_by_key(|(at, _)| *at);
        Err(r.problems)
    }
}

/// A table being read: its entries and how to name it in messages.
struct Table<'t> {
    entries: &'t Entries,
    /// How messages name the table: `[vrrp]`, `service[0].health`, `the top level`.
    label: String,
    /// What goes before a key to name it fully: `vrrp.`, `service[0].`, or nothing at the top level.
    prefix: String,
    /// Where a missing key is reported: the table header, or the start of an inline table.
    anchor: usize,
}

impl<'t> Table<'t> {
    fn get(&self, key: &str) -> Option<Field<'t>> {
        self.entries.iter().find(|(k, _)| k.value == key).map(|(k, v)| Field {
            path: format!("{}{}", self.prefix, key),
            node: &v.value,
            // A table made implicitly by a dotted key (`vrrp.vrid = 5`) has no text of its own: use the key's.
            at: if v.span.is_empty() { k.span.start } else { v.span.start },
            key_at: k.span.start,
        })
    }
}

/// One key's value, with what is needed to complain about it.
struct Field<'t> {
    /// The key's full name in messages: `vrrp.priority`, `service[1].backends[0].weight`.
    path: String,
    node: &'t Node,
    /// Where the value starts (for "must be ..., got ..." problems).
    at: usize,
    /// Where the key starts (for "only meaningful with ..." problems, which are about the key being there at all).
    key_at: usize,
}

#[derive(Default)]
struct Reader {
    problems: Vec<RawProblem>,
    /// The file is in the list form (`[[instance]]`): problems name keys and tables as `instance[N]. ...`.
    list_form: bool,
    /// Every VIP address read, with where: for the checks across instances.
    addresses: Vec<Written<IpAddr>>,
    /// Addresses that must not be a VIP (backends, advert sources, peers), with where and what they are.
    not_vips: Vec<(Written<IpAddr>, NotVip)>,
    /// Running totals against the data plane's sizes.
    totals: Totals,
}

/// A value and where it was written: its position, its key path, and the instance it belongs to.
struct Written<T> {
    value: T,
    at: usize,
    path: String,
    instance: usize,
}

/// What an address that must not be a VIP is.
#[derive(Clone, Copy)]
enum NotVip {
    Backend,
    Source,
    Peer,
}

#[derive(Default)]
struct Totals {
    instances: usize,
    services: usize,
    backends: usize,
    /// (address, port, protocol) entries: every service listens on every address of its instance.
    listeners: usize,
}

/// What the checks across instances need of one instance besides its config: where its keys were written.
struct Marks {
    name_at: usize,
    vrid_at: usize,
}

/// `a string "x"`, `an integer 300`: the kind of a value and, for scalars, the value itself.
fn describe(node: &Node) -> String {
    match node {
        Node::String(s) => format!("a string {s:?}"),
        Node::Integer(i) => format!("an integer {i}"),
        Node::Float(f) => format!("a float {f}"),
        Node::Boolean(b) => format!("a boolean {b}"),
        Node::Datetime(d) => format!("a datetime {d}"),
        other => other.kind().to_owned(),
    }
}

/// Levenshtein distance, for "did you mean" suggestions. Keys are short, so the quadratic algorithm is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The allowed word closest to what was written, if it is close enough to be a plausible typo: within a third of
/// its length (at least 1, at most 3 edits), or a prefix of it (`advert_interval` for `advert_interval_ms`).
pub(super) fn suggest<'a>(written: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let written = written.to_ascii_lowercase();
    let best = allowed
        .iter()
        .map(|candidate| (edit_distance(&written, candidate), *candidate))
        .min_by_key(|(distance, _)| *distance)?;
    let limit = (best.1.len() / 3).clamp(1, 3);
    if best.0 <= limit {
        return Some(best.1);
    }
    allowed
        .iter()
        .find(|c| written.len() >= 3 && (c.starts_with(written.as_str()) || written.starts_with(**c)))
        .copied()
}

/// "in [vrrp]", but "at the top level".
fn within(label: &str) -> String {
    if label == TOP_LEVEL { format!("at {label}") } else { format!("in {label}") }
}

fn quoted_list(words: &[&str]) -> String {
    words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", ")
}

impl Reader {
    fn error(&mut self, at: usize, message: impl Into<String>) {
        self.problems.push((at, message.into()));
    }

    fn homes(&self) -> &'static [(&'static str, &'static [&'static str])] {
        if self.list_form { INSTANCE_KEY_HOMES } else { KEY_HOMES }
    }

    /// Reports every key of `table` that is not in `known`, suggesting the likely intended key.
    fn reject_unknown_keys(&mut self, table: &Table, known: &[&str]) {
        for (key, _) in table.entries {
            if known.contains(&key.value.as_str()) {
                continue;
            }
            let hint = if let Some(close) = suggest(&key.value, known) {
                format!("did you mean `{close}`?")
            } else if let Some((home, _)) = self.homes().iter().find(|(_, keys)| keys.contains(&key.value.as_str())) {
                format!("`{}` belongs {}", key.value, within(home))
            } else {
                format!("allowed here: {}", known.join(", "))
            };
            self.error(key.span.start, format!("unknown key `{}` {}; {hint}", key.value, within(&table.label)));
        }
    }

    fn missing(&mut self, table: &Table, key: &str, expected: &str) {
        self.error(table.anchor, format!("missing required key `{key}` {}; expected {expected}", within(&table.label)));
    }

    fn wrong_type(&mut self, field: &Field, expected: &str) {
        self.error(field.at, format!("{} must be {expected}, got {}", field.path, describe(field.node)));
    }

    fn string<'t>(&mut self, field: &Field<'t>) -> Option<&'t str> {
        match field.node {
            Node::String(s) => Some(s),
            _ => {
                self.wrong_type(field, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, field: &Field) -> Option<bool> {
        match field.node {
            Node::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(field, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer within `range`; `note` explains the range when its meaning is not obvious.
    fn integer(&mut self, field: &Field, range: RangeInclusive<i64>, note: &str) -> Option<i64> {
        let Node::Integer(value) = field.node else {
            self.wrong_type(field, &format!("an integer {}..={}{note}", range.start(), range.end()));
            return None;
        };
        if range.contains(value) {
            Some(*value)
        } else {
            self.error(
                field.at,
                format!("{} must be {}..={}{note}, got {value}", field.path, range.start(), range.end()),
            );
            None
        }
    }

    /// Optional integer key: the default when absent, `None` (and a problem) when invalid.
    fn int_or<T: TryFrom<i64>>(
        &mut self,
        table: &Table,
        key: &str,
        range: RangeInclusive<i64>,
        note: &str,
        default: T,
    ) -> T {
        match table.get(key) {
            None => default,
            Some(field) => self.integer(&field, range, note).and_then(|v| T::try_from(v).ok()).unwrap_or(default),
        }
    }

    fn bool_or(&mut self, table: &Table, key: &str, default: bool) -> bool {
        table.get(key).and_then(|f| self.boolean(&f)).unwrap_or(default)
    }

    fn ipv4(&mut self, field: &Field) -> Option<Ipv4Addr> {
        let text = self.string(field)?;
        match text.parse::<Ipv4Addr>() {
            Ok(address) => Some(address),
            Err(_) => {
                self.error(
                    field.at,
                    format!(
                        "{} must be an IPv4 address in dotted-quad form like \"10.0.0.1\", got {text:?}",
                        field.path
                    ),
                );
                None
            }
        }
    }

    /// An IPv4 address that can name one host: not 0.0.0.0, loopback, multicast or the broadcast address.
    fn host_ipv4(&mut self, field: &Field, what: &str) -> Option<Ipv4Addr> {
        let address = self.ipv4(field)?;
        let wrong = if address.is_unspecified() {
            Some("the unspecified address")
        } else if address.is_loopback() {
            Some("a loopback address")
        } else if address.is_multicast() {
            Some("a multicast address")
        } else if address.is_broadcast() {
            Some("the broadcast address")
        } else {
            None
        };
        match wrong {
            Some(wrong) => {
                self.error(field.at, format!("{} must be {what}, got {address} ({wrong})", field.path));
                None
            }
            None => Some(address),
        }
    }

    /// An IPv6 address that can name one host: not ::, loopback or multicast; `None` (and no problem) when the text
    /// is not IPv6 at all, so the caller reads it as IPv4.
    fn host_ipv6(&mut self, field: &Field, what: &str) -> Option<Option<Ipv6Addr>> {
        let Node::String(text) = field.node else { return Some(None) };
        let Ok(address) = text.parse::<Ipv6Addr>() else { return Some(None) };
        let wrong = if address.is_unspecified() {
            Some("the unspecified address")
        } else if address.is_loopback() {
            Some("the loopback address")
        } else if address.is_multicast() {
            Some("a multicast address")
        } else if address.to_ipv4_mapped().is_some() {
            Some("an IPv4-mapped address; write the IPv4 address instead")
        } else {
            None
        };
        match wrong {
            Some(wrong) => {
                self.error(field.at, format!("{} must be {what}, got {address} ({wrong})", field.path));
                None
            }
            None => Some(Some(address)),
        }
    }

    /// A host address of either family (`what4`/`what6` say what is expected, for messages).
    fn host_ip(&mut self, field: &Field, what4: &str, what6: &str) -> Option<IpAddr> {
        match self.host_ipv6(field, what6)? {
            Some(v6) => Some(IpAddr::V6(v6)),
            None => self.host_ipv4(field, what4).map(IpAddr::V4),
        }
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(&mut self, field: &Field, choices: &[(&str, T)]) -> Option<T> {
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        let Node::String(text) = field.node else {
            self.wrong_type(field, &format!("one of {}", quoted_list(&words)));
            return None;
        };
        if let Some((_, value)) = choices.iter().find(|(w, _)| w == text) {
            return Some(*value);
        }
        let hint = suggest(text, &words).map(|w| format!("; did you mean \"{w}\"?")).unwrap_or_default();
        self.error(field.at, format!("{} must be one of {}, got {text:?}{hint}", field.path, quoted_list(&words)));
        None
    }

    fn choice_or<T: Copy>(&mut self, table: &Table, key: &str, choices: &[(&str, T)], default: T) -> T {
        table.get(key).and_then(|f| self.choice(&f, choices)).unwrap_or(default)
    }

    /// A sub-table; `label` names it in messages. Its anchor is where it was written.
    fn table<'t>(&mut self, field: &Field<'t>, label: String, prefix: String) -> Option<Table<'t>> {
        match field.node {
            Node::Table(entries) => Some(Table { entries, label, prefix, anchor: field.at }),
            _ => {
                self.wrong_type(field, "a table");
                None
            }
        }
    }

    fn array<'t>(&mut self, field: &Field<'t>, expected: &str) -> Option<&'t [Spanned<Node>]> {
        match field.node {
            Node::Array(items) => Some(items),
            _ => {
                self.wrong_type(field, expected);
                None
            }
        }
    }

    /// A name a TLS client can send and verify: a DNS name or an IP address, checked the way rustls will check it
    /// when the health checker connects, so a bad name fails `xvip check` rather than every probe.
    fn server_name(&mut self, field: &Field) -> Option<String> {
        let name = self.string(field)?;
        match rustls_pki_types::ServerName::try_from(name) {
            Ok(_) => Some(name.to_owned()),
            Err(_) => {
                self.error(
                    field.at,
                    format!(
                        "{} must be a DNS name like \"api.example.com\" or an IP address, got {name:?}",
                        field.path
                    ),
                );
                None
            }
        }
    }

    /// A non-empty path.
    fn path(&mut self, field: &Field) -> Option<PathBuf> {
        let text = self.string(field)?;
        if text.is_empty() {
            self.error(field.at, format!("{} must be a file path, got an empty string", field.path));
            return None;
        }
        Some(PathBuf::from(text))
    }

    fn root(&mut self, entries: &Entries) -> Config {
        let root = Table { entries, label: TOP_LEVEL.into(), prefix: String::new(), anchor: 0 };
        let instance_field = root.get("instance");
        self.list_form = instance_field.is_some();
        self.reject_unknown_keys(&root, ROOT_KEYS);

        let interface = root.get("interface").and_then(|field| self.interface(&field));
        let xdp_mode = self.choice_or(
            &root,
            "xdp_mode",
            &[("auto", XdpMode::Auto), ("native", XdpMode::Native), ("generic", XdpMode::Generic)],
            XdpMode::Auto,
        );
        let conntrack_entries = self.int_or(
            &root,
            "conntrack_entries",
            i64::from(CONNTRACK_ENTRIES_MIN)..=i64::from(CONNTRACK_ENTRIES_MAX),
            " (flows the data plane remembers)",
            lb_common::DEFAULT_CONNTRACK_ENTRIES,
        );
        let local_clients = self.bool_or(&root, "local_clients", true);
        let control = match root.get("control") {
            None => Control::default(),
            Some(field) => match self.table(&field, "[control]".into(), "control.".into()) {
                None => Control::default(),
                Some(table) => self.control(&table),
            },
        };
        let metrics = match root.get("metrics") {
            None => None,
            Some(field) => self.table(&field, "[metrics]".into(), "metrics.".into()).map(|table| self.metrics(&table)),
        };

        let (instances, marks) = match &instance_field {
            Some(field) => {
                for key in ["vip", "vrrp", "service"] {
                    if let Some(stray) = root.get(key) {
                        self.error(
                            stray.key_at,
                            format!(
                                "`{key}` cannot be at the top level of a file with [[instance]] tables: a file uses \
                                 either the single form ([vip], [vrrp], [[service]]) or [[instance]]; move it into \
                                 an instance"
                            ),
                        );
                    }
                }
                self.instances(field, interface.as_deref())
            }
            None => {
                if root.get("interface").is_none() {
                    self.missing(&root, "interface", "the name of the interface that carries the VIP, like \"eth0\"");
                }
                let (instance, marks) = self.single(&root, interface.clone().unwrap_or_default());
                (vec![instance], vec![marks])
            }
        };
        self.across_instances(&instances, &marks);
        Config { interface, xdp_mode, conntrack_entries, local_clients, control, metrics, instances }
    }

    /// The single form: the top level's `[vip]`, `[vrrp]` and `[[service]]` are the one instance, named
    /// [`DEFAULT_INSTANCE`].
    fn single(&mut self, root: &Table, interface: String) -> (Instance, Marks) {
        self.totals.instances = 1;
        let vip_table = self.required_table(root, "vip", "a [vip] table with address = \"...\"");
        let vip = self.vip(vip_table.as_ref(), 0);
        let vrrp_table = self.required_table(root, "vrrp", "a [vrrp] table with vrid and priority");
        let (vrrp, vrid_at) = self.vrrp(vrrp_table.as_ref(), 0);
        let services = match root.get("service") {
            None => Vec::new(),
            Some(field) => self.services(&field, "", "[[service]]", 0, &vip),
        };
        let marks = Marks { name_at: 0, vrid_at };
        (Instance { name: DEFAULT_INSTANCE.to_owned(), interface, vip, vrrp, services }, marks)
    }

    /// The list form: each `[[instance]]` table.
    fn instances(&mut self, field: &Field, default_interface: Option<&str>) -> (Vec<Instance>, Vec<Marks>) {
        let Some(items) = self.array(field, "an array of tables: write each instance as [[instance]]") else {
            return (Vec::new(), Vec::new());
        };
        if items.is_empty() {
            self.error(field.at, "instance must list at least one instance, got an empty array");
        }
        let mut instances = Vec::new();
        let mut marks = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let label = format!("instance[{index}]");
            let element =
                Field { path: label.clone(), node: &item.value, at: item.span.start, key_at: item.span.start };
            let Some(table) = self.table(&element, label.clone(), format!("{label}.")) else { continue };
            self.totals.instances += 1;
            if self.totals.instances == lb_common::MAX_INSTANCES as usize + 1 {
                self.error(
                    table.anchor,
                    format!(
                        "too many instances: at most {} are supported (the data plane keeps an active flag per \
                         instance and address family), this is number {}",
                        lb_common::MAX_INSTANCES,
                        index + 1
                    ),
                );
            }
            let (instance, mark) = self.instance(&table, index, default_interface);
            instances.push(instance);
            marks.push(mark);
        }
        (instances, marks)
    }

    fn instance(&mut self, table: &Table, index: usize, default_interface: Option<&str>) -> (Instance, Marks) {
        self.reject_unknown_keys(table, INSTANCE_KEYS);
        let prefix = table.prefix.clone();
        let mut name = String::new();
        let mut name_at = table.anchor;
        match table.get("name") {
            None => self.missing(table, "name", "a unique name like name = \"api\""),
            Some(field) => {
                if let Some(text) = self.string(&field) {
                    let valid = !text.is_empty()
                        && text.len() <= INSTANCE_NAME_MAX
                        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if valid {
                        name = text.to_owned();
                        name_at = field.at;
                    } else {
                        self.error(
                            field.at,
                            format!(
                                "{} must be 1..={INSTANCE_NAME_MAX} letters, digits, '-', '_' or '.', like \
                                 \"api\", got {text:?}",
                                field.path
                            ),
                        );
                    }
                }
            }
        }
        let interface = match table.get("interface") {
            Some(field) => self.interface(&field).unwrap_or_default(),
            None => match default_interface {
                Some(default) => default.to_owned(),
                None => {
                    self.error(
                        table.anchor,
                        format!(
                            "missing `interface` in {}, and there is no top-level `interface` to default to; set \
                             one of them, like interface = \"eth0\"",
                            table.label
                        ),
                    );
                    String::new()
                }
            },
        };
        let vip = match table.get("vip") {
            None => {
                self.missing(table, "vip", "a [instance.vip] table with address = \"...\" or addresses = [...]");
                self.vip(None, index)
            }
            Some(field) => {
                let sub = self.table(&field, format!("{prefix}vip"), format!("{prefix}vip."));
                self.vip(sub.as_ref(), index)
            }
        };
        let (vrrp, vrid_at) = match table.get("vrrp") {
            None => {
                self.missing(table, "vrrp", "a [instance.vrrp] table with vrid and priority");
                (Vrrp::with_ids(0, 0), table.anchor)
            }
            Some(field) => {
                let sub = self.table(&field, format!("{prefix}vrrp"), format!("{prefix}vrrp."));
                self.vrrp(sub.as_ref(), index)
            }
        };
        let services = match table.get("service") {
            None => Vec::new(),
            Some(field) => self.services(&field, &prefix, "[[instance.service]]", index, &vip),
        };
        let marks = Marks { name_at, vrid_at };
        (Instance { name, interface, vip, vrrp, services }, marks)
    }

    /// What no single table can check: names and VRIDs per interface unique, an address in one instance only, and
    /// no backend, advert source or peer at a VIP's address.
    fn across_instances(&mut self, instances: &[Instance], marks: &[Marks]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut vrids: HashMap<(&str, u8), usize> = HashMap::new();
        for (index, (instance, mark)) in instances.iter().zip(marks).enumerate() {
            if !instance.name.is_empty() {
                if let Some(first) = names.get(instance.name.as_str()) {
                    self.error(
                        mark.name_at,
                        format!(
                            "instance[{index}].name {:?} is already used by instance[{first}]; names must be unique",
                            instance.name
                        ),
                    );
                } else {
                    names.insert(&instance.name, index);
                }
            }
            // 0: invalid or missing, reported already.
            if instance.vrrp.vrid != 0 && !instance.interface.is_empty() {
                let key = (instance.interface.as_str(), instance.vrrp.vrid);
                if let Some(first) = vrids.get(&key) {
                    self.error(
                        mark.vrid_at,
                        format!(
                            "instance[{index}].vrrp.vrid {} is already used on {} by instance[{first}] ({:?}); each \
                             instance on an interface needs its own VRID (it names the VRRP group on the segment)",
                            instance.vrrp.vrid, instance.interface, instances[*first].name
                        ),
                    );
                } else {
                    vrids.insert(key, index);
                }
            }
        }
        // Each address once over the whole file (repeats inside one list were reported while reading it).
        let mut owners: HashMap<IpAddr, usize> = HashMap::new();
        let mut problems = Vec::new();
        for written in &self.addresses {
            match owners.get(&written.value) {
                Some(&first) if first != written.instance => problems.push((
                    written.at,
                    format!(
                        "{} {} is already an address of instance[{first}] ({:?}); an address belongs to one instance",
                        written.path,
                        written.value,
                        instances.get(first).map_or("", |i| i.name.as_str())
                    ),
                )),
                Some(_) => {}
                None => {
                    owners.insert(written.value, written.instance);
                }
            }
        }
        for (written, what) in &self.not_vips {
            let Some(&owner) = owners.get(&written.value) else { continue };
            let of = if self.list_form {
                format!(
                    ", an address of instance[{owner}] ({:?})",
                    instances.get(owner).map_or("", |i| i.name.as_str())
                )
            } else {
                String::new()
            };
            let (path, vip) = (&written.path, written.value);
            let message = match what {
                NotVip::Backend => {
                    format!("{path} is the VIP {vip}{of}; a backend must be a real server's own address")
                }
                NotVip::Source => format!(
                    "{path} must be this node's own address, not the VIP {vip}{of} (adverts must come from an \
                     address the node keeps when it is backup)"
                ),
                NotVip::Peer => format!("{path} is the VIP {vip}{of}; list the other nodes' own addresses"),
            };
            problems.push((written.at, message));
        }
        self.problems.extend(problems);
    }

    fn required_table<'t>(&mut self, root: &Table<'t>, key: &str, expected: &str) -> Option<Table<'t>> {
        match root.get(key) {
            None => {
                self.error(0, format!("missing required table [{key}]; expected {expected}"));
                None
            }
            Some(field) => self.table(&field, format!("[{key}]"), format!("{key}.")),
        }
    }

    /// Linux refuses names longer than 15 bytes and names with '/', ':' or whitespace (`dev_valid_name`).
    fn interface(&mut self, field: &Field) -> Option<String> {
        let name = self.string(field)?;
        const RULE: &str = "1..=15 bytes without '/', ':' or whitespace, like \"eth0\"";
        let problem = if name.is_empty() {
            Some("an empty name".to_owned())
        } else if name.len() > IFNAME_MAX {
            Some(format!("{name:?} ({} bytes)", name.len()))
        } else if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            Some(format!("{name:?}"))
        } else {
            None
        };
        match problem {
            Some(got) => {
                self.error(field.at, format!("{} must be an interface name of {RULE}, got {got}", field.path));
                None
            }
            None => Some(name.to_owned()),
        }
    }

    /// An address a VIP can have: a unicast IPv4 or IPv6 address (not link-local IPv6: a VIP is reached through
    /// routers, and the advert's source is the link-local address already).
    fn vip_address(&mut self, field: &Field) -> Option<IpAddr> {
        let address = self.host_ip(field, "a unicast IPv4 address", "a unicast IPv6 address")?;
        if let IpAddr::V6(v6) = address
            && v6.is_unicast_link_local()
        {
            self.error(
                field.at,
                format!(
                    "{} is the link-local address {v6}; a VIP must be a global or unique-local IPv6 address",
                    field.path
                ),
            );
            return None;
        }
        Some(address)
    }

    /// `[vip]` (or an instance's): `address` or `addresses`, and `hostname`.
    fn vip(&mut self, table: Option<&Table>, instance: usize) -> Vip {
        let mut vip = Vip { addresses: Vec::new(), hostname: None };
        let Some(table) = table else { return vip };
        self.reject_unknown_keys(table, VIP_KEYS);
        let mut written: Vec<Written<IpAddr>> = Vec::new();
        match (table.get("address"), table.get("addresses")) {
            (None, None) => self.missing(
                table,
                "address",
                "the virtual IPv4 or IPv6 address, like address = \"10.0.0.250\" (or addresses = [...] for several)",
            ),
            (Some(_), Some(both)) => self.error(
                both.key_at,
                format!(
                    "{}address and {}addresses are both set; use address for one address or addresses for several",
                    table.prefix, table.prefix
                ),
            ),
            (Some(field), None) => {
                if let Some(address) = self.vip_address(&field) {
                    written.push(Written { value: address, at: field.at, path: field.path.clone(), instance });
                }
            }
            (None, Some(field)) => {
                let Some(items) = self.array(&field, "an array of IP addresses, like [\"10.0.0.250\", \"fd00::250\"]")
                else {
                    return vip;
                };
                if items.is_empty() {
                    self.error(field.at, format!("{} must list at least one address, got an empty array", field.path));
                }
                for (i, item) in items.iter().enumerate() {
                    let element = Field {
                        path: format!("{}[{i}]", field.path),
                        node: &item.value,
                        at: item.span.start,
                        key_at: item.span.start,
                    };
                    let Some(address) = self.vip_address(&element) else { continue };
                    if written.iter().any(|w| w.value == address) {
                        self.error(
                            element.at,
                            format!("{} repeats {address}; each address must be listed once", element.path),
                        );
                        continue;
                    }
                    if written.len() == MAX_ADDRESSES_PER_INSTANCE {
                        self.error(
                            element.at,
                            format!(
                                "{} is one address too many: an instance holds at most {MAX_ADDRESSES_PER_INSTANCE} \
                                 (a VRRP advert counts them in one byte)",
                                element.path
                            ),
                        );
                        break;
                    }
                    written.push(Written { value: address, at: element.at, path: element.path.clone(), instance });
                }
            }
        }
        for (i, w) in written.iter().enumerate() {
            if self.addresses.len() + i == lb_common::MAX_VIPS as usize {
                self.error(
                    w.at,
                    format!(
                        "too many addresses: at most {} over all instances are supported (the size of the data \
                         plane's VIP table), {} is number {}",
                        lb_common::MAX_VIPS,
                        w.path,
                        lb_common::MAX_VIPS + 1
                    ),
                );
            }
            vip.addresses.push(w.value);
        }
        self.addresses.extend(written);
        if let Some(field) = table.get("hostname") {
            vip.hostname = self.server_name(&field);
        }
        vip
    }

    /// `[vrrp]` (or an instance's), and where `vrid` was written (for the check across instances).
    fn vrrp(&mut self, table: Option<&Table>, instance: usize) -> (Vrrp, usize) {
        let mut vrrp = Vrrp::with_ids(0, 0);
        let Some(table) = table else { return (vrrp, 0) };
        self.reject_unknown_keys(table, VRRP_KEYS);

        let mut vrid_at = table.anchor;
        match table.get("vrid") {
            None => self.missing(table, "vrid", "the virtual router ID 1..=255, the same on every node"),
            Some(field) => {
                vrid_at = field.at;
                vrrp.vrid = self.integer(&field, 1..=255, " (the same on every node of the group)").unwrap_or(0) as u8
            }
        }
        match table.get("priority") {
            None => self.missing(table, "priority", "1..=255 (highest wins; 255 = address owner)"),
            Some(field) => vrrp.priority = self.integer(&field, 1..=255, " (255 = address owner)").unwrap_or(0) as u8,
        }
        if let Some(field) = table.get("advert_interval_ms")
            && let Some(ms) = self.integer(&field, 10..=40950, " (VRRPv3 sends centiseconds in 12 bits)")
        {
            if ms % 10 == 0 {
                vrrp.advert_interval_ms = ms as u32;
            } else {
                self.error(
                    field.at,
                    format!("{} must be a multiple of 10 (VRRPv3 counts centiseconds), got {ms}", field.path),
                );
            }
        }
        vrrp.preempt = self.bool_or(table, "preempt", DEFAULT_PREEMPT);
        vrrp.preempt_delay_ms = self.int_or(table, "preempt_delay_ms", 0..=1_000_000, "", 0);

        if let Some(field) = table.get("source_address")
            && let Some(address) =
                self.host_ip(&field, "this node's unicast IPv4 address", "this node's unicast IPv6 address")
        {
            match address {
                IpAddr::V4(v4) => vrrp.source_address = Some(v4),
                IpAddr::V6(v6) => vrrp.source_address6 = Some(v6),
            }
            let written = Written { value: address, at: field.at, path: field.path.clone(), instance };
            self.not_vips.push((written, NotVip::Source));
        }
        if let Some(field) = table.get("unicast_peers") {
            let source = vrrp.source_address.map(IpAddr::V4).or(vrrp.source_address6.map(IpAddr::V6));
            for peer in self.unicast_peers(&field, source, instance) {
                match peer {
                    IpAddr::V4(v4) => vrrp.unicast_peers.push(v4),
                    IpAddr::V6(v6) => vrrp.unicast_peers6.push(v6),
                }
            }
        }
        vrrp.checksum = self.choice_or(
            table,
            "checksum",
            &[("pseudo-header", ChecksumMode::PseudoHeader), ("rfc9568", ChecksumMode::Rfc9568)],
            ChecksumMode::PseudoHeader,
        );
        vrrp.garp_count = self.int_or(table, "garp_count", 0..=100, "", DEFAULT_GARP_COUNT);
        vrrp.garp_repeat_delay_ms = self.int_or(
            table,
            "garp_repeat_delay_ms",
            0..=3_600_000,
            " (0 = no second burst)",
            DEFAULT_GARP_REPEAT_DELAY_MS,
        );
        if let Some(field) = table.get("garp_refresh_ms")
            && let Some(ms) = self.integer(&field, 0..=3_600_000, " (0 = off)")
        {
            if ms != 0 && ms < 100 {
                self.error(field.at, format!("{} must be 0 (off) or at least 100, got {ms}", field.path));
            } else {
                vrrp.garp_refresh_ms = ms as u32;
            }
        }
        vrrp.backend_loss_penalty = self.int_or(
            table,
            "backend_loss_penalty",
            0..=254,
            " (subtracted from the priority while a service has no healthy backend)",
            0,
        );
        (vrrp, vrid_at)
    }

    fn unicast_peers(&mut self, field: &Field, source: Option<IpAddr>, instance: usize) -> Vec<IpAddr> {
        let Some(items) = self.array(field, "an array of IP addresses (empty = multicast to 224.0.0.18 and ff02::12)")
        else {
            return Vec::new();
        };
        let mut peers = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let element = Field {
                path: format!("{}[{i}]", field.path),
                node: &item.value,
                at: item.span.start,
                key_at: item.span.start,
            };
            let Some(peer) =
                self.host_ip(&element, "another node's unicast IPv4 address", "another node's unicast IPv6 address")
            else {
                continue;
            };
            if peers.contains(&peer) {
                self.error(element.at, format!("{} repeats {peer}; each peer must be listed once", element.path));
            } else if Some(peer) == source {
                self.error(
                    element.at,
                    format!("{} is {peer}, this node's own source_address; list only the other nodes", element.path),
                );
            } else {
                let written = Written { value: peer, at: element.at, path: element.path.clone(), instance };
                self.not_vips.push((written, NotVip::Peer));
                peers.push(peer);
            }
        }
        peers
    }

    fn control(&mut self, table: &Table) -> Control {
        self.reject_unknown_keys(table, CONTROL_KEYS);
        let mut control = Control::default();
        if let Some(field) = table.get("socket")
            && let Some(path) = self.path(&field)
        {
            let len = path.as_os_str().len();
            if len > SOCKET_PATH_MAX {
                self.error(
                    field.at,
                    format!(
                        "{} must be at most {SOCKET_PATH_MAX} bytes long (the limit of a Unix socket address), got \
                         {len}",
                        field.path
                    ),
                );
            } else {
                control.socket = path;
            }
        }
        control
    }

    fn metrics(&mut self, table: &Table) -> Metrics {
        self.reject_unknown_keys(table, METRICS_KEYS);
        let mut metrics = Metrics::default();
        if let Some(field) = table.get("listen")
            && let Some(listen) = self.listen_address(&field)
        {
            metrics.listen = listen;
        }
        metrics
    }

    /// `ADDRESS:PORT` (`"127.0.0.1:9712"`, `"[::1]:9712"`) or a bare address, which gets [`DEFAULT_METRICS_PORT`].
    fn listen_address(&mut self, field: &Field) -> Option<SocketAddr> {
        let text = self.string(field)?;
        let parsed = text
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, DEFAULT_METRICS_PORT)));
        let why = match parsed {
            None => "not an address",
            Some(a) if a.port() == 0 => "port 0 would be a different random port on every start",
            Some(a) if a.ip().is_multicast() => "a multicast address",
            Some(address) => return Some(address),
        };
        self.error(
            field.at,
            format!(
                "{} must be an address and port to listen on, like \"127.0.0.1:{DEFAULT_METRICS_PORT}\", \
                 \"[::1]:{DEFAULT_METRICS_PORT}\" or \"0.0.0.0\" (port {DEFAULT_METRICS_PORT}), got {text:?} ({why})",
                field.path
            ),
        );
        None
    }

    /// The services of one instance. `prefix` goes before `service[N]` in key paths (`instance[0].`), `header`
    /// is how the user writes one (`[[service]]`), `vip` the instance's addresses (each service listens on every
    /// one; its backends' families must match them).
    fn services(&mut self, field: &Field, prefix: &str, header: &str, instance: usize, vip: &Vip) -> Vec<Service> {
        let addresses = vip.addresses.len();
        let Some(items) = self.array(field, &format!("an array of tables: write each service as {header}")) else {
            return Vec::new();
        };
        let mut services = Vec::new();
        // Where each name and (port, protocol) was first used, to reject duplicates.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listeners: HashMap<(u16, Protocol), usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let label = format!("{prefix}service[{index}]");
            let element =
                Field { path: label.clone(), node: &item.value, at: item.span.start, key_at: item.span.start };
            let Some(table) = self.table(&element, label.clone(), format!("{label}.")) else {
                continue;
            };
            // A Maglev table per service and address family of the instance's addresses.
            let tables = (usize::from(!vip.ipv4().is_empty()) + usize::from(!vip.ipv6().is_empty())).max(1);
            let before = self.totals.services;
            self.totals.services += tables;
            let limit = lb_common::MAX_SERVICES as usize;
            if before <= limit && self.totals.services > limit {
                let per_family = if tables > 1 { " (one per service and address family)" } else { "" };
                self.error(
                    table.anchor,
                    format!(
                        "too many services: at most {limit} Maglev tables over all instances are supported (the data \
                         plane is sized for that), this service brings them to {}{per_family}",
                        self.totals.services
                    ),
                );
            }
            let before = self.totals.listeners;
            self.totals.listeners += addresses;
            let limit = lb_common::MAX_LISTENERS as usize;
            if before <= limit && self.totals.listeners > limit {
                self.error(
                    table.anchor,
                    format!(
                        "too many service listeners: each service listens on every address of its instance, and the \
                         data plane holds at most {limit} (address, port) pairs; {label} brings the total to {}",
                        self.totals.listeners
                    ),
                );
            }
            let read = self.service(&table, &label, instance, vip);
            if let Some((name, at)) = &read.name {
                if let Some(first) = names.get(name) {
                    self.error(
                        *at,
                        format!(
                            "{label}.name {name:?} is already used by {prefix}service[{first}]; names must be unique"
                        ),
                    );
                } else {
                    names.insert(name.clone(), index);
                }
            }
            if let Some(port_at) = read.port_at {
                let key = (read.service.port, read.service.protocol);
                if let Some(first) = listeners.get(&key) {
                    let scope = if self.list_form { " on the instance's addresses" } else { "" };
                    self.error(
                        port_at,
                        format!(
                            "{label}.port {}/{} is already used by {prefix}service[{first}]; each port and protocol \
                             can belong to one service only{scope}",
                            read.service.port, read.service.protocol
                        ),
                    );
                } else {
                    listeners.insert(key, index);
                }
            }
            services.push(read.service);
        }
        services
    }

    fn service(&mut self, table: &Table, label: &str, instance: usize, vip: &Vip) -> ReadService {
        self.reject_unknown_keys(table, SERVICE_KEYS);
        let mut service = Service {
            name: String::new(),
            port: 0,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::Nat,
            backends: Vec::new(),
            health: Health::default(),
        };
        let mut name = None;
        match table.get("name") {
            None => self.missing(table, "name", "a unique name like name = \"kube-apiserver\""),
            Some(field) => match self.string(&field) {
                Some("") => {
                    self.error(field.at, format!("{} must be a non-empty name, got an empty string", field.path))
                }
                Some(text) if text.len() > SERVICE_NAME_MAX => self.error(
                    field.at,
                    format!("{} must be at most {SERVICE_NAME_MAX} bytes long, got {} bytes", field.path, text.len()),
                ),
                Some(text) => {
                    service.name = text.to_owned();
                    name = Some((text.to_owned(), field.at));
                }
                None => {}
            },
        }
        let mut port_at = None;
        match table.get("port") {
            None => self.missing(table, "port", "the port on the VIP, 1..=65535"),
            Some(field) => {
                if let Some(port) = self.integer(&field, 1..=65535, "") {
                    service.port = port as u16;
                    port_at = Some(field.at);
                }
            }
        }
        service.protocol =
            self.choice_or(table, "protocol", &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)], Protocol::Tcp);
        service.forwarding =
            self.choice_or(table, "forwarding", &[("nat", Forwarding::Nat), ("dsr", Forwarding::Dsr)], Forwarding::Nat);
        match table.get("backends") {
            None => {
                self.missing(table, "backends", "an array like backends = [{ address = \"10.0.0.11\", port = 6443 }]")
            }
            Some(field) => {
                service.backends = self.backends(&field, &service, instance, vip);
                self.backend_families(&field, &service, vip);
            }
        }
        service.health = match table.get("health") {
            None => Health::default_for(service.protocol),
            Some(field) => {
                let label = format!("{label}.health");
                match self.table(&field, label.clone(), format!("{label}.")) {
                    None => Health::default_for(service.protocol),
                    Some(health) => self.health(&health, service.protocol),
                }
            }
        };
        ReadService { service, name, port_at }
    }

    /// A service's backends have the family of the VIP address they are reached through: each family of the
    /// instance's VIPs needs a backend of it (its VIPs would answer nothing otherwise). A NAT service may leave out
    /// IPv6 backends (as before NAT to IPv6 existed): its IPv6 VIPs then carry nothing for it.
    fn backend_families(&mut self, field: &Field, service: &Service, vip: &Vip) {
        if service.backends.is_empty() {
            return;
        }
        let ipv6_required = service.forwarding == Forwarding::Dsr;
        for (family, vips, has) in [
            ("IPv4", !vip.ipv4().is_empty(), service.backends.iter().any(|b| b.address.is_ipv4())),
            ("IPv6", !vip.ipv6().is_empty() && ipv6_required, service.backends.iter().any(|b| b.address.is_ipv6())),
        ] {
            if vips && !has {
                self.error(
                    field.at,
                    format!(
                        "{} has no {family} backend, but the instance has {family} addresses: a service's backends \
                         have the family of the VIP address they are reached through, so list an {family} backend \
                         too (or move the service to an instance without {family} addresses)",
                        field.path
                    ),
                );
            }
        }
    }

    fn backends(&mut self, field: &Field, service: &Service, instance: usize, vip: &Vip) -> Vec<BackendCfg> {
        let Some(items) = self.array(field, "an array of tables like [{ address = \"10.0.0.11\", port = 6443 }]")
        else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(field.at, format!("{} must list at least one backend, got an empty array", field.path));
            return Vec::new();
        }
        let mut backends: Vec<BackendCfg> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let element = Field {
                path: format!("{}[{i}]", field.path),
                node: &item.value,
                at: item.span.start,
                key_at: item.span.start,
            };
            let Some(table) = self.table(&element, element.path.clone(), format!("{}.", element.path)) else {
                continue;
            };
            self.totals.backends += 1;
            if self.totals.backends == lb_common::MAX_BACKENDS as usize + 1 {
                self.error(
                    table.anchor,
                    format!(
                        "too many backends: at most {} over all services are supported (the size of the data \
                         plane's backend table)",
                        lb_common::MAX_BACKENDS
                    ),
                );
            }
            self.reject_unknown_keys(&table, BACKEND_KEYS);
            let address = match table.get("address") {
                None => {
                    self.missing(&table, "address", "the backend's address, like address = \"10.0.0.11\"");
                    None
                }
                Some(field) => {
                    let address =
                        self.host_ip(&field, "a unicast IPv4 address", "a global or unique local IPv6 address");
                    if let Some(address) = address {
                        let written = Written { value: address, at: field.at, path: field.path.clone(), instance };
                        self.not_vips.push((written, NotVip::Backend));
                    }
                    address.filter(|a| self.backend_family_ok(&field, *a, vip))
                }
            };
            let port = match table.get("port") {
                None => Some(service.port),
                Some(field) => {
                    let port = self.integer(&field, 1..=65535, "").map(|p| p as u16);
                    // A service port that was invalid (0 here) has been reported already.
                    if let Some(port) = port
                        && service.forwarding == Forwarding::Dsr
                        && port != service.port
                        && service.port != 0
                    {
                        self.error(
                            field.at,
                            format!(
                                "{} must equal the service port {} with forwarding = \"dsr\" (the backend answers \
                                 from the VIP without translation), got {port}",
                                field.path, service.port
                            ),
                        );
                    }
                    port
                }
            };
            let weight = self.int_or(&table, "weight", 0..=255, " (share of new flows; 0 = draining)", DEFAULT_WEIGHT);
            let (Some(address), Some(port)) = (address, port) else { continue };
            if backends.iter().any(|b| b.address == address && b.port == port) {
                self.error(
                    element.at,
                    format!(
                        "{} repeats backend {address}:{port}; each address and port may be listed once per service",
                        element.path
                    ),
                );
                continue;
            }
            backends.push(BackendCfg { address, port, weight });
        }
        backends
    }

    /// Whether a backend's address fits its instance's VIPs (an address of a family the instance has no VIP of
    /// would never get a packet); reports why not.
    fn backend_family_ok(&mut self, field: &Field, address: IpAddr, vip: &Vip) -> bool {
        let (family, vips) = match address {
            IpAddr::V4(_) => ("IPv4", vip.ipv4().len()),
            IpAddr::V6(_) => ("IPv6", vip.ipv6().len()),
        };
        let problem = if let IpAddr::V6(v6) = address
            && v6.segments()[0] & 0xffc0 == 0xfe80
        {
            Some(format!(
                "{} is a link-local address ({address}); a backend needs a global or unique local IPv6 address",
                field.path
            ))
        } else if vips == 0 && !vip.addresses.is_empty() {
            Some(format!(
                "{} is an {family} address ({address}), but the instance has no {family} address: a service's \
                 backends have the family of the VIP address they are reached through (an IPv4 VIP is not \
                 balanced to IPv6 backends, nor the reverse)",
                field.path
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(field.at, message);
                false
            }
            None => true,
        }
    }

    fn health(&mut self, table: &Table, protocol: Protocol) -> Health {
        self.reject_unknown_keys(table, HEALTH_KEYS);
        let mut health = Health::default_for(protocol);
        let checks = [
            ("tcp", CheckKind::Tcp),
            ("http", CheckKind::Http),
            ("https", CheckKind::Https),
            ("none", CheckKind::None),
        ];
        // False when `check` was written but refused: that was reported, and "only meaningful with check = ..."
        // problems measured against the default check would only add noise.
        let mut check_known = true;
        if let Some(field) = table.get("check") {
            match self.choice(&field, &checks) {
                None => check_known = false,
                Some(check) if protocol == Protocol::Udp && check != CheckKind::None => {
                    check_known = false;
                    self.error(
                        field.at,
                        format!(
                            "{} must be \"none\" for a udp service (xvip has no UDP health check, and a TCP answer \
                             says nothing about a UDP server), got \"{check}\"",
                            field.path
                        ),
                    );
                }
                Some(check) => health.check = check,
            }
        }
        let http = !check_known || matches!(health.check, CheckKind::Http | CheckKind::Https);
        let https = !check_known || health.check == CheckKind::Https;

        // Keys that only an HTTP(S) check reads: a user who sets them with another check most likely forgot to
        // change `check`, so say so instead of ignoring them.
        for key in ["path", "expect_status", "tls_verify", "ca_file", "server_name"] {
            let Some(field) = table.get(key) else { continue };
            let needs_http = matches!(key, "path" | "expect_status");
            if needs_http && !http {
                self.error(
                    field.key_at,
                    format!(
                        "{} is only meaningful with check = \"http\" or \"https\", got check = \"{}\"",
                        field.path, health.check
                    ),
                );
                continue;
            }
            if !needs_http && !https {
                self.error(
                    field.key_at,
                    format!(
                        "{} is only meaningful with check = \"https\", got check = \"{}\"",
                        field.path, health.check
                    ),
                );
                continue;
            }
            match key {
                "path" => {
                    if let Some(path) = self.string(&field) {
                        // The path goes verbatim into the request line, where a space or a control character would
                        // end it or break the request.
                        if path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                            health.path = path.to_owned();
                        } else {
                            self.error(
                                field.at,
                                format!(
                                    "{} must start with \"/\" and contain no spaces or control characters, like \
                                     \"/readyz\", got {path:?}",
                                    field.path
                                ),
                            );
                        }
                    }
                }
                "expect_status" => {
                    if let Some(status) = self.integer(&field, 100..=599, " (an HTTP status code)") {
                        health.expect_status = status as u16;
                    }
                }
                "tls_verify" => {
                    if let Some(verify) = self.boolean(&field) {
                        health.tls_verify = verify;
                    }
                }
                "ca_file" => health.ca_file = self.path(&field),
                _ => health.server_name = self.server_name(&field),
            }
        }
        if let Some(field) = table.get("ca_file")
            && https
            && !health.tls_verify
            && health.ca_file.is_some()
        {
            self.error(
                field.key_at,
                format!(
                    "{} is never used with tls_verify = false; remove it, or remove tls_verify = false to verify \
                     backends against it",
                    field.path
                ),
            );
        }

        // The comparison below only makes sense between values that are valid (or defaults): an invalid one has
        // been reported already.
        let mut comparable = true;
        let interval = table.get("interval_ms");
        if let Some(field) = &interval {
            match self.integer(field, 100..=3_600_000, "") {
                Some(ms) => health.interval_ms = ms as u32,
                None => comparable = false,
            }
        }
        let timeout = table.get("timeout_ms");
        if let Some(field) = &timeout {
            match self.integer(field, 1..=3_600_000, "") {
                Some(ms) => health.timeout_ms = ms as u32,
                None => comparable = false,
            }
        }
        if comparable && health.timeout_ms > health.interval_ms {
            // Point at whichever of the two the user wrote; the other one is a default.
            let at = match (&timeout, &interval) {
                (Some(field), _) | (None, Some(field)) => field.at,
                (None, None) => table.anchor,
            };
            let path = &table.prefix;
            self.error(
                at,
                format!(
                    "{path}timeout_ms ({}) must not exceed {path}interval_ms ({}): a check must end before the next \
                     one starts",
                    health.timeout_ms, health.interval_ms
                ),
            );
        }
        health.rise = self.int_or(table, "rise", 1..=1000, " (consecutive successes)", DEFAULT_RISE);
        health.fall = self.int_or(table, "fall", 1..=1000, " (consecutive failures)", DEFAULT_FALL);
        health
    }
}

/// A service and the positions needed for checks across services.
struct ReadService {
    service: Service,
    name: Option<(String, usize)>,
    port_at: Option<usize>,
}

//! Logsource routing: which events a rule's `logsource` applies to.
//!
//! Without routing, plain Sigma over-matches badly on real logs (a `process_creation` rule on
//! `Image|endswith: '\cmd.exe'` would also fire on image loads and registry events of
//! cmd.exe). Mamori compiles each `logsource` into a [`Route`]: the Windows channels,
//! providers and event ids it means (Sysmon and the Security log for the generic categories,
//! as in the Sigma taxonomy), or the ECS `event.category`/`event.type` of Mamori's own sensor
//! events for Linux and macOS.
//!
//! A logsource Mamori cannot route (an unknown Windows service or category) is refused with
//! that reason, so a rule never silently watches nothing.

use mamori_model::{EventKind, Product};

use crate::ast::LogSource;

const SYSMON: &str = "Microsoft-Windows-Sysmon/Operational";
const SYSMON_PROVIDER: &str = "Microsoft-Windows-Sysmon";
const PS_OPERATIONAL: &[&str] = &[
    "Microsoft-Windows-PowerShell/Operational",
    "PowerShellCore/Operational",
];
const PS_CLASSIC: &[&str] = &["Windows PowerShell"];

/// One way an event can satisfy a logsource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alt {
    /// Windows channels (any; compared case-insensitively). Empty: any channel.
    channels: Vec<&'static str>,
    /// Windows providers that also qualify when the channel differs (forwarded events).
    providers: Vec<&'static str>,
    /// Event ids (any). Empty: any id.
    event_ids: Vec<u32>,
}

/// A compiled logsource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Windows events matching any alternative.
    Windows(Vec<Alt>),
    /// ECS events of this product (Linux/macOS) with this category and one of these types
    /// (both optional), or this service (`event.module`/`event.dataset`).
    Ecs {
        product: Option<Product>,
        category: Option<&'static str>,
        types: Vec<&'static str>,
        service: Option<String>,
    },
    /// Any event of another product, optionally of a service.
    Other {
        product: Option<String>,
        service: Option<String>,
    },
    /// Every event (routing switched off, for measurements).
    Any,
}

fn sysmon(ids: &[u32]) -> Alt {
    Alt {
        channels: vec![SYSMON],
        providers: vec![SYSMON_PROVIDER],
        event_ids: ids.to_vec(),
    }
}

fn chan(channels: &[&'static str], ids: &[u32]) -> Alt {
    Alt {
        channels: channels.to_vec(),
        providers: Vec::new(),
        event_ids: ids.to_vec(),
    }
}

/// Windows `category` → the events that carry it.
fn windows_category(cat: &str) -> Option<Vec<Alt>> {
    Some(match cat {
        "process_creation" => vec![sysmon(&[1]), chan(&["Security"], &[4688])],
        "file_change" => vec![sysmon(&[2])],
        "network_connection" => vec![sysmon(&[3])],
        "sysmon_status" => vec![sysmon(&[4, 16])],
        "process_termination" => vec![sysmon(&[5]), chan(&["Security"], &[4689])],
        "driver_load" => vec![sysmon(&[6])],
        "image_load" => vec![sysmon(&[7])],
        "create_remote_thread" => vec![sysmon(&[8])],
        "raw_access_thread" => vec![sysmon(&[9])],
        "process_access" => vec![sysmon(&[10])],
        "file_event" => vec![sysmon(&[11])],
        "registry_add" | "registry_delete" => vec![sysmon(&[12])],
        "registry_set" => vec![sysmon(&[13])],
        "registry_rename" => vec![sysmon(&[14])],
        "registry_event" => vec![sysmon(&[12, 13, 14])],
        "create_stream_hash" => vec![sysmon(&[15])],
        "pipe_created" => vec![sysmon(&[17, 18])],
        "wmi_event" => vec![sysmon(&[19, 20, 21])],
        "dns_query" => vec![sysmon(&[22])],
        "file_delete" => vec![sysmon(&[23, 26])],
        "clipboard_capture" => vec![sysmon(&[24])],
        "process_tampering" => vec![sysmon(&[25])],
        "file_block_executable" => vec![sysmon(&[27])],
        "file_block_shredding" => vec![sysmon(&[28])],
        "file_executable_detected" => vec![sysmon(&[29])],
        "sysmon_error" => vec![sysmon(&[255])],
        "ps_module" => vec![chan(PS_OPERATIONAL, &[4103])],
        "ps_script" => vec![chan(PS_OPERATIONAL, &[4104])],
        "ps_classic_start" => vec![chan(PS_CLASSIC, &[400])],
        "ps_classic_provider_start" => vec![chan(PS_CLASSIC, &[600])],
        "ps_classic_script" => vec![chan(PS_CLASSIC, &[800])],
        "file_access" | "file_rename" => {
            vec![chan(&["Microsoft-Windows-Kernel-File/Analytic"], &[])]
        }
        "antivirus" => vec![chan(
            &["Microsoft-Windows-Windows Defender/Operational"],
            &[1006, 1015, 1116, 1117],
        )],
        "dns" => vec![chan(
            &["DNS Server", "Microsoft-Windows-DNS-Server/Analytical"],
            &[],
        )],
        "firewall" => vec![chan(
            &["Microsoft-Windows-Windows Firewall With Advanced Security/Firewall"],
            &[],
        )],
        _ => return None,
    })
}

/// Windows `service` → channels (as in the Sigma taxonomy and pySigma's Windows pipeline).
fn windows_service(service: &str) -> Option<&'static [&'static str]> {
    Some(match service {
        "security" => &["Security"],
        "system" => &["System"],
        "application" => &["Application"],
        "sysmon" => &[SYSMON],
        "powershell" => PS_OPERATIONAL,
        "powershell-classic" => PS_CLASSIC,
        "taskscheduler" => &["Microsoft-Windows-TaskScheduler/Operational"],
        "wmi" => &["Microsoft-Windows-WMI-Activity/Operational"],
        "dns-server" => &["DNS Server"],
        "dns-server-audit" => &["Microsoft-Windows-DNS-Server/Audit"],
        "dns-server-analytic" => &["Microsoft-Windows-DNS-Server/Analytical"],
        "driver-framework" => &["Microsoft-Windows-DriverFrameworks-UserMode/Operational"],
        "ntlm" => &["Microsoft-Windows-NTLM/Operational"],
        "dhcp" => &["Microsoft-Windows-DHCP-Server/Operational"],
        "msexchange-management" => &["MSExchange Management"],
        "applocker" => &[
            "Microsoft-Windows-AppLocker/MSI and Script",
            "Microsoft-Windows-AppLocker/EXE and DLL",
            "Microsoft-Windows-AppLocker/Packaged app-Deployment",
            "Microsoft-Windows-AppLocker/Packaged app-Execution",
        ],
        "printservice-admin" => &["Microsoft-Windows-PrintService/Admin"],
        "printservice-operational" => &["Microsoft-Windows-PrintService/Operational"],
        "terminalservices-localsessionmanager" => {
            &["Microsoft-Windows-TerminalServices-LocalSessionManager/Operational"]
        }
        "smbclient-security" => &["Microsoft-Windows-SmbClient/Security"],
        "smbclient-connectivity" => &["Microsoft-Windows-SmbClient/Connectivity"],
        "smbserver-connectivity" => &["Microsoft-Windows-SMBServer/Connectivity"],
        "codeintegrity-operational" => &["Microsoft-Windows-CodeIntegrity/Operational"],
        "firewall-as" => &["Microsoft-Windows-Windows Firewall With Advanced Security/Firewall"],
        "bits-client" => &["Microsoft-Windows-Bits-Client/Operational"],
        "windefend" => &["Microsoft-Windows-Windows Defender/Operational"],
        "security-mitigations" => &[
            "Microsoft-Windows-Security-Mitigations/Kernel Mode",
            "Microsoft-Windows-Security-Mitigations/User Mode",
        ],
        "diagnosis-scripted" => &["Microsoft-Windows-Diagnosis-Scripted/Operational"],
        "shell-core" => &["Microsoft-Windows-Shell-Core/Operational"],
        "openssh" => &["OpenSSH/Operational"],
        "bitlocker" => &["Microsoft-Windows-BitLocker/BitLocker Management"],
        "vhdmp" => &["Microsoft-Windows-VHDMP-Operational"],
        "appxdeployment-server" => &["Microsoft-Windows-AppXDeploymentServer/Operational"],
        "lsa-server" => &["Microsoft-Windows-LSA/Operational"],
        "appxpackaging-om" => &["Microsoft-Windows-AppxPackaging/Operational"],
        "dns-client" => &["Microsoft-Windows-DNS Client Events/Operational"],
        "appmodel-runtime" => &["Microsoft-Windows-AppModel-Runtime/Admin"],
        "capi2" => &["Microsoft-Windows-CAPI2/Operational"],
        "certificateservicesclient-lifecycle-system" => {
            &["Microsoft-Windows-CertificateServicesClient-Lifecycle-System/Operational"]
        }
        "kernel-shimengine" => &[
            "Microsoft-Windows-Kernel-ShimEngine/Operational",
            "Microsoft-Windows-Kernel-ShimEngine/Diagnostic",
        ],
        "sense" => &["Microsoft-Windows-SENSE/Operational"],
        "ldap" | "ldap_debug" => &["Microsoft-Windows-LDAP-Client/Debug"],
        "microsoft-servicebus-client" => &["Microsoft-ServiceBus-Client"],
        "iis-configuration" => &["Microsoft-IIS-Configuration/Operational"],
        "hyper-v-worker" => &["Microsoft-Windows-Hyper-V-Worker-Admin"],
        "rdp" | "terminalservices-remoteconnectionmanager" => {
            &["Microsoft-Windows-TerminalServices-RemoteConnectionManager/Operational"]
        }
        "wmi-activity" => &["Microsoft-Windows-WMI-Activity/Operational"],
        // Services Mamori's own rules use, named after their channels.
        "rdp-corets" => &["Microsoft-Windows-RemoteDesktopServices-RdpCoreTS/Operational"],
        "wininet-config" => &["Microsoft-Windows-WinINet-Config/ProxyConfigChanged"],
        _ => return None,
    })
}

/// ECS category and types for the Sigma generic categories, as Mamori's sensor emits them.
fn ecs_category(cat: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match cat {
        "process_creation" => ("process", &["start"]),
        "process_termination" => ("process", &["end"]),
        "network_connection" => ("network", &["start", "connection"]),
        "file_event" => ("file", &["creation", "change"]),
        "file_change" => ("file", &["change"]),
        "file_delete" => ("file", &["deletion"]),
        "file_rename" => ("file", &["change"]),
        "file_access" => ("file", &["access"]),
        "dns_query" | "dns" => ("network", &["protocol"]),
        "image_load" => ("library", &[]),
        "driver_load" => ("driver", &[]),
        _ => return None,
    })
}

impl Route {
    /// Compiles a rule's logsource, or says why it cannot be routed.
    pub(crate) fn compile(ls: &LogSource) -> Result<Route, String> {
        let product = ls.product.as_deref();
        match product {
            Some("windows") => {
                let mut alts = match ls.category.as_deref() {
                    Some(c) => windows_category(c).ok_or_else(|| {
                        format!("category `{c}` has no known Windows event mapping")
                    })?,
                    None => vec![chan(&[], &[])],
                };
                if let Some(s) = ls.service.as_deref() {
                    let chans = windows_service(s)
                        .ok_or_else(|| format!("unknown Windows service `{s}`"))?;
                    for a in &mut alts {
                        if a.channels.is_empty() || a.channels.iter().any(|c| chans.contains(c)) {
                            a.channels = chans.to_vec();
                            a.providers.clear();
                        }
                    }
                }
                Ok(Route::Windows(alts))
            }
            Some(p @ ("linux" | "macos")) => {
                let (category, types) = match ls.category.as_deref() {
                    Some(c) => match ecs_category(c) {
                        Some((cat, types)) => (Some(cat), types.to_vec()),
                        None => {
                            return Err(format!("category `{c}` has no known {p} event mapping"));
                        }
                    },
                    None => (None, Vec::new()),
                };
                Ok(Route::Ecs {
                    product: Some(if p == "linux" {
                        Product::Linux
                    } else {
                        Product::MacOs
                    }),
                    category,
                    types,
                    service: ls.service.clone(),
                })
            }
            None if ls.category.as_deref().and_then(windows_category).is_some()
                && ls.service.is_none() =>
            {
                // A generic category without a product: Windows events and ECS events alike.
                Route::compile(&LogSource {
                    product: Some("windows".into()),
                    ..ls.clone()
                })
            }
            _ => Ok(Route::Other {
                product: product.map(str::to_string),
                service: ls.service.clone().or_else(|| ls.category.clone()),
            }),
        }
    }

    /// Does the event described by `kind` belong to this logsource?
    pub(crate) fn accepts(&self, kind: &EventKind<'_>) -> bool {
        match self {
            Route::Any => true,
            Route::Windows(alts) => {
                kind.product == Product::Windows && alts.iter().any(|a| a.accepts(kind))
            }
            Route::Ecs {
                product,
                category,
                types,
                service,
            } => {
                if let Some(p) = product
                    && &kind.product != p
                {
                    return false;
                }
                if let Some(s) = service {
                    return kind.service.as_deref().is_some_and(|k| {
                        k.eq_ignore_ascii_case(s) || k.ends_with(&format!(".{s}"))
                    });
                }
                if let Some(c) = category
                    && !kind.ecs_category.iter().any(|k| k.eq_ignore_ascii_case(c))
                {
                    return false;
                }
                types.is_empty()
                    || kind
                        .ecs_type
                        .iter()
                        .any(|t| types.iter().any(|w| t.eq_ignore_ascii_case(w)))
            }
            Route::Other { product, service } => {
                let product_ok = match (product, &kind.product) {
                    (Some(p), Product::Other(k)) => p.eq_ignore_ascii_case(k),
                    (Some(_), _) => false,
                    (None, Product::Windows) => false,
                    (None, _) => true,
                };
                product_ok
                    && match service {
                        Some(s) => kind
                            .service
                            .as_deref()
                            .is_some_and(|k| k.eq_ignore_ascii_case(s)),
                        None => true,
                    }
            }
        }
    }
}

impl Alt {
    fn accepts(&self, kind: &EventKind<'_>) -> bool {
        if !self.event_ids.is_empty()
            && !kind.event_id.is_some_and(|id| self.event_ids.contains(&id))
        {
            return false;
        }
        if self.channels.is_empty() {
            return true;
        }
        let chan_ok = kind
            .channel
            .is_some_and(|c| self.channels.iter().any(|w| w.eq_ignore_ascii_case(c)));
        chan_ok
            || kind
                .provider
                .is_some_and(|p| self.providers.iter().any(|w| w.eq_ignore_ascii_case(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(p: Option<&str>, c: Option<&str>, s: Option<&str>) -> LogSource {
        LogSource {
            product: p.map(Into::into),
            category: c.map(Into::into),
            service: s.map(Into::into),
        }
    }

    fn win(channel: &str, id: u32) -> EventKind<'_> {
        EventKind {
            product: Product::Windows,
            channel: Some(channel),
            provider: None,
            event_id: Some(id),
            ecs_category: vec![],
            ecs_type: vec![],
            service: None,
        }
    }

    #[test]
    fn process_creation_is_sysmon_1_or_security_4688() {
        let r = Route::compile(&ls(Some("windows"), Some("process_creation"), None)).unwrap();
        assert!(r.accepts(&win(SYSMON, 1)));
        assert!(r.accepts(&win("Security", 4688)));
        assert!(!r.accepts(&win(SYSMON, 7)));
        assert!(!r.accepts(&win("Security", 4624)));
    }

    #[test]
    fn services_and_products() {
        let r = Route::compile(&ls(Some("windows"), None, Some("security"))).unwrap();
        assert!(r.accepts(&win("Security", 4624)));
        assert!(!r.accepts(&win("System", 7045)));
        assert!(
            Route::compile(&ls(Some("windows"), None, Some("nope")))
                .unwrap_err()
                .contains("unknown Windows service")
        );
        assert!(Route::compile(&ls(Some("windows"), Some("nope"), None)).is_err());
        let linux = Route::compile(&ls(Some("linux"), Some("process_creation"), None)).unwrap();
        assert!(!linux.accepts(&win(SYSMON, 1)));
        let ecs = EventKind {
            product: Product::Linux,
            channel: None,
            provider: None,
            event_id: None,
            ecs_category: vec!["process"],
            ecs_type: vec!["start"],
            service: None,
        };
        assert!(linux.accepts(&ecs));
        let aws = Route::compile(&ls(Some("aws"), None, Some("cloudtrail"))).unwrap();
        assert!(!aws.accepts(&ecs) && !aws.accepts(&win(SYSMON, 1)));
    }
}

//! Validation of how hosts authenticate: the pre-shared key file, or public keys and certificates (the private
//! key, each host's public key or certificate, the CA).

use super::*;

impl Cx<'_> {
    pub(in crate::config) fn auth(
        &self,
        m: &schema::MeshSection,
        mesh_span: Option<Range<usize>>,
        hosts: &[S<schema::HostSection>],
        valid_hosts: &[Host],
        private_key_override: Option<&Path>,
    ) -> Result<Auth, ConfigError> {
        let method = m.auth.as_ref().map_or("psk", |v| v.get_ref().as_str());
        let only_with = |span: Range<usize>, key: String, method: &str| {
            self.err(
                Some(span),
                key,
                ErrorKind::Invalid {
                    problem: format!("set, but it is only used with auth = \"{method}\""),
                    allowed: format!("remove it, or set mesh.auth = \"{method}\""),
                },
            )
        };
        match method {
            "psk" => {
                if let Some(v) = &m.private_key {
                    return Err(only_with(v.span(), "mesh.private_key".to_owned(), "pubkey"));
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().pubkey.as_ref().map(|v| (i, v))) {
                    return Err(only_with(v.span(), format!("host[{i}].pubkey"), "pubkey"));
                }
                if let Some(v) = &m.ca {
                    return Err(only_with(v.span(), "mesh.ca".to_owned(), "pubkey"));
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().cert.as_ref().map(|v| (i, v))) {
                    return Err(only_with(v.span(), format!("host[{i}].cert"), "pubkey"));
                }
                let Some(v) = &m.psk_file else {
                    return Err(self.err(
                        mesh_span,
                        "mesh.psk_file",
                        ErrorKind::Missing {
                            what: "with auth = \"psk\", the path of a file holding the pre-shared key, readable by \
                                   root only, e.g. psk_file = \"/etc/vmsecd/psk\""
                                .to_owned(),
                        },
                    ));
                };
                let psk = Psk::read(&self.path(v.get_ref())).map_err(|e| self.err(Some(v.span()), "mesh.psk_file", e))?;
                Ok(Auth::Psk(psk))
            }
            "pubkey" => {
                if let Some(v) = &m.psk_file {
                    return Err(only_with(v.span(), "mesh.psk_file".to_owned(), "psk"));
                }
                if m.private_key.is_none() && private_key_override.is_none() {
                    return Err(self.err(
                        mesh_span,
                        "mesh.private_key",
                        ErrorKind::Missing {
                            what: "with auth = \"pubkey\", the path of this host's private key (PEM)".to_owned(),
                        },
                    ));
                }
                if let Some(ca) = &m.ca {
                    return self.cert_auth(ca, hosts, valid_hosts, private_key_override, &m.private_key);
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().cert.as_ref().map(|v| (i, v))) {
                    return Err(self.invalid(
                        v,
                        &format!("host[{i}].cert"),
                        "set, but certificates are only used with a mesh CA".to_owned(),
                        "set mesh.ca = \"PATH\" (the CA certificate), or remove cert and give each host its pubkey",
                    ));
                }
                if let Some((i, h)) = hosts.iter().enumerate().find(|(_, h)| h.get_ref().pubkey.is_none()) {
                    return Err(self.err(
                        Some(h.span()),
                        format!("host[{i}].pubkey"),
                        ErrorKind::Missing {
                            what: "with auth = \"pubkey\", the path of the host's public key (PEM)".to_owned(),
                        },
                    ));
                }
                let private_key = self.private_key(private_key_override, &m.private_key)?;
                let mut public_keys = std::collections::BTreeMap::new();
                let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
                for (i, (h, host)) in hosts.iter().zip(valid_hosts).enumerate() {
                    let v = h.get_ref().pubkey.as_ref().expect("checked above");
                    let key = format!("host[{i}].pubkey");
                    let file = PublicKeyFile::read(&self.path(v.get_ref()))
                        .map_err(|e| self.err(Some(v.span()), key.clone(), e))?;
                    if let Some(&first) = seen.get(file.key.spki_der()) {
                        return Err(self.invalid(
                            v,
                            &key,
                            format!("{} has the same public key as {}", host.name, valid_hosts[first].name),
                            "one key pair per host (vmsecd keygen on each host)",
                        ));
                    }
                    seen.insert(file.key.spki_der().to_vec(), i);
                    public_keys.insert(host.name.clone(), file);
                }
                Ok(Auth::PubKey(PubKeyAuth { private_key, public_keys }))
            }
            other => Err(self.invalid(
                m.auth.as_ref().expect("auth was given"),
                "mesh.auth",
                format!("unknown authentication method {other:?}"),
                "\"psk\" (a pre-shared key in psk_file) or \"pubkey\" (private_key and each host's pubkey, or a mesh ca \
                 and host certificates)",
            )),
        }
    }
}

impl Cx<'_> {
    fn private_key(
        &self,
        override_path: Option<&Path>,
        key: &Option<S<String>>,
    ) -> Result<PrivateKeyFile, ConfigError> {
        match (override_path, key) {
            (Some(p), _) => PrivateKeyFile::read(p).map_err(|e| self.err(None, "--private-key", e)),
            (None, Some(v)) => PrivateKeyFile::read(&self.path(v.get_ref()))
                .map_err(|e| self.err(Some(v.span()), "mesh.private_key", e)),
            (None, None) => unreachable!("checked by the caller"),
        }
    }

    /// `auth = "pubkey"` with `ca`: the CA file, and every host certificate the file names, each verified now
    /// against the CA and checked to name its host's identity, so that a wrong file is found at start rather
    /// than at the first handshake.
    fn cert_auth(
        &self,
        ca: &S<String>,
        hosts: &[S<schema::HostSection>],
        valid_hosts: &[Host],
        private_key_override: Option<&Path>,
        private_key: &Option<S<String>>,
    ) -> Result<Auth, ConfigError> {
        if let Some((i, v)) = hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.get_ref().pubkey.as_ref().map(|v| (i, v)))
        {
            return Err(self.invalid(
                v,
                &format!("host[{i}].pubkey"),
                "set together with mesh.ca: with a CA, hosts authenticate with certificates".to_owned(),
                "cert = \"PATH\" (the host's certificate) instead, or remove mesh.ca to use raw public keys",
            ));
        }
        let private_key = self.private_key(private_key_override, private_key)?;
        let ca_file = CaFile::read(&self.path(ca.get_ref()))
            .map_err(|e| self.err(Some(ca.span()), "mesh.ca", e))?;
        let now = crate::config::unix_now();
        let mut certs = std::collections::BTreeMap::new();
        for (i, (h, host)) in hosts.iter().zip(valid_hosts).enumerate() {
            let Some(v) = &h.get_ref().cert else {
                continue;
            };
            let key = format!("host[{i}].cert");
            let path = self.path(v.get_ref());
            let file =
                CertFile::read(&path).map_err(|e| self.err(Some(v.span()), key.clone(), e))?;
            let cert_err = |error| {
                self.err(
                    Some(v.span()),
                    key.clone(),
                    KeyFileError::Cert {
                        path: path.clone(),
                        error,
                    },
                )
            };
            let (end, intermediates) = file
                .chain
                .split_first()
                .expect("parse_certificates returns one or more");
            ca_file
                .anchors
                .verify(end, intermediates, now)
                .map_err(cert_err)?;
            end.check_identity(&host.id.to_id()).map_err(cert_err)?;
            certs.insert(host.name.clone(), file);
        }
        Ok(Auth::Cert(CertAuth {
            private_key,
            ca: ca_file,
            certs,
        }))
    }
}

//! Certificates a test makes for itself with the openssl CLI: a CA, a
//! server certificate for `localhost` (and only that name, so connecting by
//! `127.0.0.1` is a host name mismatch), a client certificate, and a second,
//! unrelated CA. EC P-256 keys, valid for two days, in a directory of the
//! test's own that user rabbitmq can read (the broker loads the server's).
//!
//! It does not start any server.

use std::path::PathBuf;
use std::process::Command;

/// The PEM files of one test's PKI; the directory goes on drop.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    pub fn create(tag: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("walcast-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = TestPki { dir };
        pki.make_ca("ca", "walcast test CA");
        pki.make_ca("other-ca", "some other CA");
        pki.make_leaf(
            "server",
            "localhost",
            "serverAuth",
            "subjectAltName=DNS:localhost",
        );
        pki.make_leaf("client", "walcast-client", "clientAuth", "");
        // The broker runs as user rabbitmq and must read the server's key.
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(&pki.dir));
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `path(name)` as a string, for settings.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn make_ca(&self, name: &str, cn: &str) {
        run(Command::new("openssl")
            .current_dir(&self.dir)
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", &format!("{name}.key")])
            .args(["-out", &format!("{name}.pem")])
            .args(["-days", "2", "-subj", &format!("/CN={cn}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    }

    fn make_leaf(&self, name: &str, cn: &str, usage: &str, san: &str) {
        run(Command::new("openssl")
            .current_dir(&self.dir)
            .args(["req", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", &format!("{name}.key")])
            .args(["-out", &format!("{name}.csr")])
            .args(["-subj", &format!("/CN={cn}")]));
        let mut ext = format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage={usage}\n"
        );
        if !san.is_empty() {
            ext.push_str(san);
            ext.push('\n');
        }
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        run(Command::new("openssl")
            .current_dir(&self.dir)
            .args(["x509", "-req", "-in", &format!("{name}.csr")])
            .args(["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"])
            .args(["-out", &format!("{name}.pem"), "-days", "2"])
            .args(["-extfile", &format!("{name}.ext")]));
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("run openssl (is it installed?)");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

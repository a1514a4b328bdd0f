package relay

import (
	"crypto/tls"
	"fmt"

	"holdfast/auth"
)

// CheckFiles reads the files that Load leaves to the relay's start: the
// listeners' certificates and keys and, for the exchange sender,
// exchange.ca_file, exchange.grant_key_file and each credential's secret,
// certificate or assertion files. It connects to nothing. An error names
// the field and the file.
func (o Options) CheckFiles() error {
	if _, err := listenerTLS("smtp", o.SMTP.CertFile, o.SMTP.KeyFile); err != nil {
		return err
	}
	if _, err := listenerTLS("http", o.HTTP.CertFile, o.HTTP.KeyFile); err != nil {
		return err
	}
	if o.Delivery.Sender != "exchange" {
		return nil
	}
	if _, err := exchangeTLS(o.Exchange); err != nil {
		return err
	}
	if o.Exchange.GrantKeyFile != "" {
		if _, err := auth.LoadKeyFile(o.Exchange.GrantKeyFile); err != nil {
			return fmt.Errorf("exchange.grant_key_file: %w", err)
		}
	}
	for i, c := range o.Credentials {
		if _, err := auth.NewCredential(c.authOptions(outlookScope, nil, nil)); err != nil {
			return credentialError(i, err)
		}
	}
	return nil
}

// credentialError says which entry of credentials failed to load; the
// error from auth already names the credential.
func credentialError(i int, err error) error {
	return fmt.Errorf("credentials[%d]: %w", i, err)
}

// listenerTLS loads the certificate and key a listener offers: nil when
// it has none.
func listenerTLS(section, certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s.cert_file, %s.key_file: %w", section, section, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

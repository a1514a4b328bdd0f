package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"holdfast/auth"
	"holdfast/relay"
)

// defaultWithin is --within's default: the expiry monitor's warning level.
const defaultWithin = "30d"

// credsCheck prints every credential's expiry, where it comes from, the
// days left and the result of a live token request. It fails when a
// credential has expired, fails its token request, or expires within
// --within, so that cron or a CI job can run it.
func credsCheck(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	withinFlag := fs.String("within", defaultWithin, "fail when a credential expires within `D`: days (30d) or a duration (72h); 0 fails only on expired ones")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	within, err := parseWithin(*withinFlag)
	if err != nil {
		return usagef("--within: %v", err)
	}
	o, err := loadConfig(*config)
	if err != nil {
		return err
	}
	checks, err := relay.CheckCredentials(ctx, o, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	now := e.now()
	if *asJSON {
		if err := writeJSON(e.stdout, checks); err != nil {
			return err
		}
	} else if err := printChecks(e, checks, now); err != nil {
		return err
	}
	var failed []string
	for _, c := range checks {
		switch {
		case c.TokenError != "":
			failed = append(failed, c.Credential+": the live token request failed")
		case c.Level == auth.LevelExpired:
			failed = append(failed, c.Credential+": expired")
		case !c.ExpiresAt.IsZero() && c.ExpiresAt.Sub(now) <= within:
			failed = append(failed, fmt.Sprintf("%s: expires within %s", c.Credential, *withinFlag))
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// printChecks writes a line per credential, then every known date, then
// what went wrong.
func printChecks(e *env, checks []relay.CredentialCheck, now time.Time) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREDENTIAL\tEXPIRES\tDAYS LEFT\tSOURCE\tLEVEL\tTOKEN")
	for _, c := range checks {
		days, token := "-", "ok"
		if !c.ExpiresAt.IsZero() {
			days = strconv.Itoa(c.DaysLeft(now))
		}
		if c.TokenError != "" {
			token = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Credential, stamp(c.ExpiresAt), days, orDash(c.Source), c.Level, token)
	}
	fmt.Fprintln(tw, "\nCREDENTIAL\tSOURCE\tIN USE\tKEY\tEXPIRES\tDAYS LEFT")
	for _, c := range checks {
		for _, x := range c.Expiries {
			inUse := "no"
			if x.InUse {
				inUse = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", c.Credential, x.Source, inUse, orDash(x.Key()), stamp(x.ExpiresAt), x.DaysLeft(now))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range checks {
		if c.TokenError != "" {
			fmt.Fprintf(e.stdout, "\n%s: live token request: %s\n", c.Credential, c.TokenError)
		}
		if c.GraphError != "" {
			fmt.Fprintf(e.stdout, "\n%s: Microsoft Graph: %s\n", c.Credential, graphAdvice(c.GraphError))
		}
	}
	return nil
}

// graphAdvice adds what to do to a Graph refusal.
func graphAdvice(msg string) string {
	if strings.Contains(msg, "Authorization_RequestDenied") {
		return msg + " (grant the app Application.Read.All, or Application.ReadWrite.OwnedBy with the app as an owner of itself, to read its expiry)"
	}
	return msg
}

// parseWithin reads "30d", "72h", "90m" or "0".
func parseWithin(s string) (time.Duration, error) {
	d, err := relay.ParseDuration(s)
	switch {
	case (err != nil || d < 0) && strings.HasSuffix(s, "d"):
		return 0, fmt.Errorf("%q is not a number of days such as 30d", s)
	case err != nil || d < 0:
		return 0, fmt.Errorf("%q is not a duration such as 30d or 72h", s)
	}
	return d, nil
}

// credsRotate creates a new client secret for a credential with Graph's
// addPassword and, when its secret directory can be written, writes it
// there and waits until Entra accepts it; the relays then use it, and
// remove the old secret after rotate_grace. With --print (or a read-only
// directory) it prints the new secret instead, for the operator to store.
func credsRotate(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	print := fs.Bool("print", false, "print the new secret instead of writing it (for a read-only Kubernetes Secret)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("creds rotate takes one credential name")
	}
	o, err := loadConfig(*config)
	if err != nil {
		return err
	}
	res, err := relay.RotateCredential(ctx, o, fs.Arg(0), *print, slog.New(slog.DiscardHandler))
	if errors.Is(err, relay.ErrNoCredential) {
		return usagef("%v; name a credential of %s", err, *config)
	}
	if res.Secret != "" {
		fmt.Fprintln(e.stdout, res.Secret)
		fmt.Fprintf(e.stderr, "The new client secret of %s (hint %s, key %s, ending %s) is printed above and written nowhere.\n"+
			"Store it where the relays read their secret (a Kubernetes Secret, a vault), deploy it, and once every relay\n"+
			"uses it remove the old secret (key %s) from the app registration.\n",
			fs.Arg(0), res.Hint, res.KeyID, res.End.UTC().Format(time.DateOnly), orUnknown(res.OldKeyID))
	}
	if err != nil {
		return err
	}
	if res.File != "" {
		fmt.Fprintf(e.stdout, "new client secret of %s: hint %s, key %s, ends %s, written to %s and accepted by Entra\n",
			fs.Arg(0), res.Hint, res.KeyID, res.End.UTC().Format(time.DateOnly), res.File)
		if res.OldKeyID != "" {
			fmt.Fprintf(e.stdout, "the old secret (key %s) is removed after rotate_grace, once the new one has got a token\n", res.OldKeyID)
		}
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "not found in Graph"
	}
	return s
}

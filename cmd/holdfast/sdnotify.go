package main

import (
	"fmt"
	"net"
)

// sdNotify sends one state message, such as "READY=1" or "STOPPING=1", to
// the service manager's notification socket, as sd_notify(3) does for a
// systemd unit of Type=notify. socket is $NOTIFY_SOCKET: a path, or an
// abstract socket name starting with "@". Without a socket it does
// nothing.
func sdNotify(socket, state string) error {
	if socket == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", state, err)
	}
	return nil
}

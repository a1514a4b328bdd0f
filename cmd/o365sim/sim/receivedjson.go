package sim

import "encoding/json"

// MarshalJSON writes a received message with its data as text, the
// message as the relay sent it, rather than the base64 that encoding/json
// makes of bytes: GET /admin/received shows what Exchange got. Bytes that
// are not UTF-8 become U+FFFD.
func (r Received) MarshalJSON() ([]byte, error) {
	type plain Received
	return json.Marshal(struct {
		plain
		Data string `json:"data"`
	}{plain(r), string(r.Data)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Received) UnmarshalJSON(b []byte) error {
	type plain Received
	v := struct {
		*plain
		Data string `json:"data"`
	}{plain: (*plain)(r)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	r.Data = []byte(v.Data)
	return nil
}

package terminal

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
)

// Reissue gives terminal id new credentials, for a replaced device or
// credentials lost or leaked: a new bearer token and a new batch key pair,
// shown once like at onboarding. From then on every earlier token is
// refused and a batch signed with the earlier key fails its signature
// check: in this process at once, in others sharing the database within
// CacheTTL (an upload that read the terminal before, signed with the old
// key, still lands: it was the terminal's key when it was sent).
//
// A disabled terminal is enabled again: its old credentials are dead, so
// it comes back only with the new ones. A terminal of a disabled provider
// is refused (conflict).
//
// The terminal's offline mark is kept and returned: the replacement
// numbers its offline records after mark.Seq (a record numbered at or
// below it and dated after it is rejected out_of_order, as for any
// terminal going back in its numbering).
func (s *Service) Reissue(ctx context.Context, id string) (Terminal, Credentials, Mark, error) {
	t, err := s.Terminal(ctx, id)
	if err != nil {
		return Terminal{}, Credentials{}, Mark{}, err
	}
	if t.providerDisabled {
		return Terminal{}, Credentials{}, Mark{}, errProviderDisabled()
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Terminal{}, Credentials{}, Mark{}, apperr.Wrap(apperr.Internal, err)
	}
	tok, _, err := s.auth.IssueToken(ctx, auth.Principal{Kind: auth.KindTerminal, Subject: t.ID, Role: auth.RoleTerminal, ProviderID: t.ProviderID}, TokenTTL)
	if err != nil {
		return Terminal{}, Credentials{}, Mark{}, err
	}
	// One statement stores the key and enables the terminal only while
	// its provider is enabled: a provider disabled since the read above
	// keeps it disabled (DisableProvider marks the provider first).
	res, err := s.db.W.ExecContext(ctx, `UPDATE terminals SET public_key = $2, disabled = 0, disabled_at = 0
		WHERE id = $1 AND EXISTS (SELECT 1 FROM providers p WHERE p.id = terminals.provider_id AND p.disabled = 0)`, t.ID, []byte(pub))
	if err != nil {
		// Nobody was given the new token; it need not live on either.
		s.auth.RevokeToken(context.WithoutCancel(ctx), tok)
		return Terminal{}, Credentials{}, Mark{}, storeErr(err)
	}
	s.forget(t.ID, "")
	if n, _ := res.RowsAffected(); n == 0 {
		if err := s.auth.RevokeToken(context.WithoutCancel(ctx), tok); err != nil {
			return Terminal{}, Credentials{}, Mark{}, err
		}
		return Terminal{}, Credentials{}, Mark{}, errProviderDisabled()
	}
	if err := s.auth.RevokeSubjectExcept(ctx, auth.KindTerminal, t.ID, tok); err != nil {
		// The new key is stored and the old tokens may still work: the
		// caller retries (a second reissue revokes them).
		return Terminal{}, Credentials{}, Mark{}, err
	}
	mark, err := s.OfflineMark(ctx, t.ID)
	if err != nil {
		return Terminal{}, Credentials{}, Mark{}, err
	}
	if t, err = s.Terminal(ctx, t.ID); err != nil {
		return Terminal{}, Credentials{}, Mark{}, err
	}
	return t, Credentials{Token: tok, BatchKey: base64.RawURLEncoding.EncodeToString(priv.Seed())}, mark, nil
}

func errProviderDisabled() error {
	return apperr.Newf(apperr.Conflict, "the provider is disabled", "该服务商已停用")
}

"""Who may call the gateway and what they may do: TLS for its port (:mod:`.tls`), authentication
(:mod:`.auth`), the authorization policy (:mod:`.policy`) and the guard every call passes
(:mod:`.guard`). This layer depends on the shared leaves only."""

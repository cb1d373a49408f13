package cli

// allVerbs is every bootctl verb, made fresh: Main looks the command up
// here and the help printer lists these. A new verb is a constructor
// added to this list.
func allVerbs() []*verb {
	return []*verb{
		// store_verbs.go
		commitVerb(), listVerb(), showVerb(), verifyVerb(), pruneVerb(), gcVerb(), pinVerb(true), pinVerb(false),
		diffVerb(), // diff_verb.go
		signVerb(), // sign_verb.go
		sealVerb(), // seal_verb.go
		// boot_verbs.go
		markGoodVerb(), markBadVerb(), healthVerb(), logVerb(), setDefaultVerb(), rollbackVerb(), bootOnceVerb(), statusVerb(),
		// entries.go, fsck.go, install.go
		entriesVerb(), fsckVerb(), installVerb(),
		// repo_verbs.go, repo_pull_verb.go, repo_certify_verb.go
		publishVerb(), keygenVerb(), pullVerb(), certifyVerb(),
		// run_verb.go
		runVerb(), shellVerb(),
	}
}

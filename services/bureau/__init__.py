"""The regional insurance bureau (统筹区医保经办): adjudicates what the pooled fund pays."""

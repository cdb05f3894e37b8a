//! The bank benchmark's Acre backend: the accounts of a [`Bank`] (one 8-byte object each) in
//! any `Db`, an embedded cluster or a client node of a running one. A transfer is
//! [`Bank::transfer`] (two reads, two writes, one commit); a read-only row reads four
//! accounts in a read-only transaction. An abort is a retryable error (a conflict, a full log,
//! no free transaction slot); any other error ends the run.

use super::{Attempt, Backend, Client, Kind, Total, Work};
use crate::bank::Bank;
use acre_replication::db::{Db, Error};

/// Attempts of the audit that reads the total once a row's transfers stopped (it conflicts
/// with nothing then; a few attempts cover truncations still in flight).
const TOTAL_ATTEMPTS_MAX: usize = 100;

/// An Acre database and, once created, the bank in it.
pub struct AcreBackend {
    db: Db,
    description: String,
    bank: Option<Bank>,
}

impl AcreBackend {
    /// `description` says what `db` is (an embedded cluster, the cluster in a directory).
    pub fn new(db: Db, description: String) -> AcreBackend {
        AcreBackend {
            db,
            description,
            bank: None,
        }
    }

    fn bank(&self) -> &Bank {
        self.bank
            .as_ref()
            .expect("the driver creates the accounts before it asks for clients")
    }
}

impl Backend for AcreBackend {
    fn name(&self) -> &'static str {
        "acre"
    }

    fn describe(&self) -> String {
        format!(
            "{}, {} replicas of every region, commits durable in the replicas' logs",
            self.description,
            self.db.config().f + 1
        )
    }

    fn kinds(&self) -> Vec<Kind> {
        vec![
            Kind {
                name: "transfer",
                work: Work::Transfer,
            },
            Kind {
                name: "read-only 4",
                work: Work::Read4,
            },
        ]
    }

    fn create(&mut self, count: usize, initial_balance: i64) -> anyhow::Result<()> {
        self.bank = Some(Bank::create(&self.db, count, initial_balance)?);
        Ok(())
    }

    fn client(&self) -> anyhow::Result<Box<dyn Client>> {
        Ok(Box::new(AcreClient {
            db: self.db.clone(),
            bank: self.bank().clone(),
        }))
    }

    fn total(&self) -> anyhow::Result<Total> {
        let bank = self.bank();
        let mut last = None;
        for _ in 0..TOTAL_ATTEMPTS_MAX {
            let outcome = (|| -> Result<_, Error> {
                let mut txn = self.db.begin()?;
                let (sum, negative) = bank.total(&mut txn)?;
                txn.commit()?;
                Ok((sum, negative))
            })();
            match outcome {
                Ok((sum, negative)) => {
                    return Ok(Total {
                        sum,
                        negative: negative.map(|(_, balance)| balance),
                    });
                }
                Err(error) if error.is_retryable() => last = Some(error),
                Err(error) => return Err(error.into()),
            }
        }
        Err(anyhow::Error::new(last.expect("an attempt failed"))
            .context(format!("{TOTAL_ATTEMPTS_MAX} audits aborted")))
    }
}

struct AcreClient {
    db: Db,
    bank: Bank,
}

/// An attempt's outcome: a retryable error is an abort, any other ends the run.
fn attempt(outcome: Result<(), Error>) -> anyhow::Result<Attempt> {
    match outcome {
        Ok(()) => Ok(Attempt::Committed),
        Err(error) if error.is_retryable() => Ok(Attempt::Aborted),
        Err(error) => Err(error.into()),
    }
}

impl Client for AcreClient {
    fn transfer(
        &mut self,
        _: Kind,
        from: usize,
        to: usize,
        amount: i64,
    ) -> anyhow::Result<Attempt> {
        let accounts = &self.bank.accounts;
        attempt(Bank::transfer(
            &self.db,
            accounts[from],
            accounts[to],
            amount,
        ))
    }

    fn read(&mut self, _: Kind, accounts: [usize; 4]) -> anyhow::Result<Attempt> {
        attempt((|| -> Result<(), Error> {
            let mut txn = self.db.begin()?;
            for account in accounts {
                txn.read(self.bank.accounts[account])?;
            }
            Ok(txn.commit()?)
        })())
    }
}

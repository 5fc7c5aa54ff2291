"""S3 errors: one class per S3 error code, rendered to XML in one place.

Domain errors from `storage` are mapped to these by `from_domain()`; anything
else becomes InternalError (the caller logs the traceback).
"""

from __future__ import annotations

import email.utils

from manta.server.s3.xmltext import escape
from storage import errors as se
from storage.engine import EngineUnavailable


class S3Error(Exception):
    code = "InternalError"
    status = 500
    message = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, **extra: str) -> None:
        super().__init__(message or self.message)
        self.text = message or self.message
        self.extra = extra
        self.headers: dict[str, str] = {}  # response headers the error carries (x-amz-delete-marker...)

    def with_headers(self, headers: dict[str, str]) -> S3Error:
        self.headers = headers
        return self

    def to_xml(self, resource: str, request_id: str) -> bytes:
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            f"<Code>{self.code}</Code>",
            f"<Message>{escape(self.text)}</Message>",
        ]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{escape(value)}</{name}>")
        parts.append(f"<Resource>{escape(resource)}</Resource>")
        parts.append(f"<RequestId>{request_id}</RequestId></Error>")
        return "".join(parts).encode()


def _error(code: str, status: int, message: str) -> type[S3Error]:
    return type(code, (S3Error,), {"code": code, "status": status, "message": message})


InternalError = S3Error
AccessDenied = _error("AccessDenied", 403, "Access Denied")
AccessForbidden = _error("AccessForbidden", 403, "CORSResponse: This CORS request is not allowed.")
AccessControlListNotSupported = _error("AccessControlListNotSupported", 400, "The bucket does not allow ACLs")
AuthorizationHeaderMalformed = _error(
    "AuthorizationHeaderMalformed", 400, "The authorization header is malformed."
)
AuthorizationQueryParametersError = _error(
    "AuthorizationQueryParametersError", 400, "The presigned URL query parameters are malformed."
)
BadDigest = _error(
    "BadDigest", 400, "The Content-MD5 or checksum you specified did not match what we received."
)
BucketAlreadyExists = _error(
    "BucketAlreadyExists", 409, "The requested bucket name is not available."
)
BucketAlreadyOwnedByYou = _error(
    "BucketAlreadyOwnedByYou",
    409,
    "Your previous request to create the named bucket succeeded and you already own it.",
)
BucketNotEmpty = _error("BucketNotEmpty", 409, "The bucket you tried to delete is not empty.")
EntityTooLarge = _error(
    "EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed object size."
)
EntityTooSmall = _error(
    "EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size."
)
IncompleteBody = _error(
    "IncompleteBody", 400, "You did not provide the number of bytes specified by the Content-Length HTTP header."
)
InvalidAccessKeyId = _error(
    "InvalidAccessKeyId", 403, "The AWS access key Id you provided does not exist in our records."
)
InvalidArgument = _error("InvalidArgument", 400, "Invalid Argument")
InvalidBucketName = _error("InvalidBucketName", 400, "The specified bucket is not valid.")
InvalidDigest = _error("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
InvalidPart = _error(
    "InvalidPart",
    400,
    "One or more of the specified parts could not be found or its entity tag did not match.",
)
InvalidPartOrder = _error(
    "InvalidPartOrder", 400, "The list of parts was not in ascending order."
)
InvalidTag = _error("InvalidTag", 400, "The tag provided was not a valid tag.")
InvalidURI = _error("InvalidURI", 400, "Couldn't parse the specified URI.")
InvalidLocationConstraint = _error("InvalidLocationConstraint", 400, "The specified location-constraint is not valid.")
NoSuchVersion = _error("NoSuchVersion", 404, "The specified version does not exist.")
NoSuchUser = _error("NoSuchUser", 404, "The specified user does not exist.")
UserAlreadyExists = _error("UserAlreadyExists", 409, "The user already exists.")
ServiceUnavailable = _error("ServiceUnavailable", 503, "The service is unavailable; please retry.")
SlowDown = _error("SlowDown", 503, "Please reduce your request rate.")
NoSuchJob = _error("NoSuchJob", 404, "The specified job does not exist.")
NoSuchImage = _error("NoSuchImage", 404, "The specified task image does not exist.")
ImageBuildFailed = _error("ImageBuildFailed", 400, "The task image could not be built.")
BadRequest = _error("BadRequest", 400, "Bad Request")
InvalidRange = _error("InvalidRange", 416, "The requested range is not satisfiable")
InvalidRequest = _error("InvalidRequest", 400, "Invalid Request")
InvalidStorageClass = _error("InvalidStorageClass", 400, "The storage class you specified is not valid")
KeyTooLongError = _error("KeyTooLongError", 400, "Your key is too long")
MalformedACLError = _error(
    "MalformedACLError", 400, "The XML you provided was not well-formed or did not validate against our published schema."
)
MalformedPolicy = _error("MalformedPolicy", 400, "This policy contains invalid Json")
MalformedXML = _error(
    "MalformedXML", 400, "The XML you provided was not well-formed or did not validate against our published schema."
)
MetadataTooLarge = _error(
    "MetadataTooLarge", 400, "Your metadata headers exceed the maximum allowed metadata size."
)
MethodNotAllowed = _error(
    "MethodNotAllowed", 405, "The specified method is not allowed against this resource."
)
MissingContentLength = _error(
    "MissingContentLength", 411, "You must provide the Content-Length HTTP header."
)
NoSuchCORSConfiguration = _error("NoSuchCORSConfiguration", 404, "The CORS configuration does not exist")
NoSuchLifecycleConfiguration = _error("NoSuchLifecycleConfiguration", 404, "The lifecycle configuration does not exist")
NoSuchBucket = _error("NoSuchBucket", 404, "The specified bucket does not exist")
NoSuchKey = _error("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _error(
    "NoSuchUpload", 404, "The specified multipart upload does not exist."
)
NoSuchBucketPolicy = _error("NoSuchBucketPolicy", 404, "The bucket policy does not exist")
NoSuchPublicAccessBlockConfiguration = _error(
    "NoSuchPublicAccessBlockConfiguration", 404, "The public access block configuration was not found"
)
OwnershipControlsNotFoundError = _error(
    "OwnershipControlsNotFoundError", 404, "The bucket ownership controls were not found"
)
ObjectLockConfigurationNotFoundError = _error(
    "ObjectLockConfigurationNotFoundError", 404, "Object Lock configuration does not exist for this bucket"
)
NoSuchObjectLockConfiguration = _error(
    "NoSuchObjectLockConfiguration", 404, "The specified object does not have a ObjectLock configuration"
)
InvalidBucketState = _error("InvalidBucketState", 409, "The request is not valid with the current state of the bucket.")
NoSuchTagSet = _error("NoSuchTagSet", 404, "The TagSet does not exist")
NotImplemented_ = _error(
    "NotImplemented", 501, "A header or query you provided implies functionality that is not implemented."
)
PreconditionFailed = _error(
    "PreconditionFailed", 412, "At least one of the preconditions you specified did not hold."
)
RequestHeaderSectionTooLarge = _error(
    "RequestHeaderSectionTooLarge", 400, "Your request header section exceeds the maximum allowed size."
)
RequestTimeout = _error(
    "RequestTimeout", 400, "Your socket connection to the server was not read from or written to within the timeout period."
)
RequestTimeTooSkewed = _error(
    "RequestTimeTooSkewed", 403, "The difference between the request time and the current time is too large."
)
SignatureDoesNotMatch = _error(
    "SignatureDoesNotMatch",
    403,
    "The request signature we calculated does not match the signature you provided.",
)
QuotaExceeded = _error("QuotaExceeded", 403, "The account is at one of its quota limits.")
UnresolvableGrantByEmailAddress = _error(
    "UnresolvableGrantByEmailAddress", 400, "The email address you provided does not match any account on record."
)
InvalidBucketAclWithObjectOwnership = _error(
    "InvalidBucketAclWithObjectOwnership", 400, "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting"
)
UserKeyMustBeSpecified = _error(
    "UserKeyMustBeSpecified", 400,
    "The bucket POST must contain the specified field name. If it is specified, check the order of the fields.",
)
XAmzContentSHA256Mismatch = _error(
    "XAmzContentSHA256Mismatch", 400, "The provided 'x-amz-content-sha256' header does not match what was computed."
)


def from_domain(exc: se.StorageError) -> S3Error:
    """Map a storage-layer error to its S3 error (the single mapping point)."""
    if isinstance(exc, se.NoSuchBucket):
        return NoSuchBucket(BucketName=exc.bucket)
    if isinstance(exc, se.NoSuchKey):
        return NoSuchKey(Key=exc.key)
    if isinstance(exc, se.BucketNotEmpty):
        return BucketNotEmpty(BucketName=exc.bucket)
    if isinstance(exc, se.BucketAlreadyExists):
        cls = BucketAlreadyOwnedByYou if exc.owned_by_you else BucketAlreadyExists
        return cls(BucketName=exc.bucket)
    if isinstance(exc, se.NoSuchVersion):
        return NoSuchVersion(Key=exc.key, VersionId=exc.version_id)
    if isinstance(exc, se.InvalidVersionId):
        return InvalidArgument("Invalid version id specified", ArgumentName="versionId",
                               ArgumentValue=exc.version_id)
    if isinstance(exc, se.DeleteMarker):
        headers = {"x-amz-delete-marker": "true", "x-amz-version-id": exc.version_id}
        if exc.latest:
            return NoSuchKey(Key=exc.key).with_headers(headers)
        return MethodNotAllowed(ResourceType="DeleteMarker").with_headers(
            {**headers, "last-modified": email.utils.formatdate(exc.mtime, usegmt=True)})
    if isinstance(exc, se.NoSuchUpload):
        return NoSuchUpload(UploadId=exc.upload_id)
    if isinstance(exc, se.SourceChanged):
        return PreconditionFailed(Condition="x-amz-copy-source-if-match")
    if isinstance(exc, se.PreconditionFailed):
        return PreconditionFailed(Condition=exc.condition)
    if isinstance(exc, se.InvalidPart):
        return InvalidPart(PartNumber=str(exc.number))
    if isinstance(exc, se.InvalidPartOrder):
        return InvalidPartOrder()
    if isinstance(exc, se.EntityTooSmall):
        return EntityTooSmall(ProposedSize=str(exc.size), MinSizeAllowed=str(exc.minimum),
                              PartNumber=str(exc.number))
    if isinstance(exc, se.ResourceExhausted):
        return SlowDown()
    if isinstance(exc, se.BlobUnavailable | se.InsufficientNodes | se.NoSuchBlob | EngineUnavailable):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, se.QuotaExceeded):
        return QuotaExceeded(f"Account {exc.account} is at its {exc.resource} quota of {exc.limit}.",
                             Account=exc.account, Resource=exc.resource, Limit=str(exc.limit))
    if isinstance(exc, se.ObjectLocked):
        return AccessDenied("Access Denied because object protected by object lock.")
    if isinstance(exc, se.ObjectLockNotEnabled):
        return InvalidRequest("Bucket is missing Object Lock Configuration")
    if isinstance(exc, se.InvalidBucketState):
        return InvalidBucketState(exc.reason)
    if isinstance(exc, se.NoSuchAccount):
        return InvalidAccessKeyId(AWSAccessKeyId=exc.access_key)
    return InternalError()
